package shred

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/admit"
)

func setup(t testing.TB, size int64) (string, *os.File, string, admit.Snapshot) {
	t.Helper()
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	name := "checkpoint-a_b-c-2026-03-13T21:43:06Z.tar"
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, samplearchive.NewPageReader(1), size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	snap, err := admit.Stat(d, name)
	if err != nil {
		t.Fatal(err)
	}
	return dir, d, name, snap
}

func TestShredOverwrites(t *testing.T) {
	const size = 3<<20 + 777
	dir, d, name, snap := setup(t, size)
	orig, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	// A descriptor opened before shredding still reaches the inode: read
	// it right after the overwrite, before the truncate.
	spy, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var seen []byte
	afterOverwrite = func() { seen, _ = io.ReadAll(io.NewSectionReader(spy, 0, size)) }
	defer func() { afterOverwrite = nil }()

	res, err := Shred(d, name, snap, 2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Passes != 2 || res.Bytes != size || res.FSType == "" {
		t.Errorf("result %+v", res)
	}
	if len(seen) != size {
		t.Fatalf("read %d bytes after overwrite", len(seen))
	}
	blocks := map[string]int{}
	for off := 0; off+4096 <= size; off += 4096 {
		if bytes.Equal(seen[off:off+4096], orig[off:off+4096]) {
			t.Fatalf("block at %d not overwritten", off)
		}
		// The pattern must not be deduplicable (a keystream restarted per
		// buffer would repeat every MiB) ...
		if prev, ok := blocks[string(seen[off:off+4096])]; ok {
			t.Fatalf("blocks at %d and %d were overwritten alike", prev, off)
		}
		blocks[string(seen[off:off+4096])] = off
	}
	// ... nor compressible.
	var z bytes.Buffer
	zw, _ := flate.NewWriter(&z, flate.BestSpeed)
	zw.Write(seen)
	zw.Close()
	if z.Len() < len(seen) {
		t.Errorf("the overwrite compresses from %d to %d bytes", len(seen), z.Len())
	}
	if st, _ := spy.Stat(); st.Size() != 0 {
		t.Errorf("inode not truncated: %d bytes", st.Size())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("directory not empty after shred: %v", ents)
	}
}

func TestZeroPasses(t *testing.T) {
	_, d, name, snap := setup(t, 10000)
	res, err := Shred(d, name, snap, 0)
	if err != nil || res.Passes != 0 {
		t.Fatal(res, err)
	}
	if _, err := admit.Stat(d, name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("still there: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(t *testing.T, dir, name string, snap *admit.Snapshot)
	}{
		{"grew", func(t *testing.T, dir, name string, _ *admit.Snapshot) {
			f, _ := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
			f.Write([]byte("more"))
			f.Close()
		}},
		{"hard link", func(t *testing.T, dir, name string, _ *admit.Snapshot) {
			os.Link(filepath.Join(dir, name), filepath.Join(dir, "other"))
		}},
		{"replaced", func(t *testing.T, dir, name string, _ *admit.Snapshot) {
			os.Remove(filepath.Join(dir, name))
			samplearchive.WriteFile(filepath.Join(dir, name), samplearchive.Options{})
		}},
		{"symlink", func(t *testing.T, dir, name string, _ *admit.Snapshot) {
			os.Rename(filepath.Join(dir, name), filepath.Join(dir, "real"))
			os.Symlink("real", filepath.Join(dir, name))
		}},
		{"wrong inode", func(t *testing.T, dir, name string, snap *admit.Snapshot) { snap.Ino++ }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, d, name, snap := setup(t, 8192)
			before := map[string][]byte{}
			tt.mutate(t, dir, name, &snap)
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
					before[e.Name()] = b
				}
			}
			if _, err := Shred(d, name, snap, 1); !errors.Is(err, ErrChanged) {
				t.Fatalf("Shred: %v, want ErrChanged", err)
			}
			for n, b := range before {
				if a, err := os.ReadFile(filepath.Join(dir, n)); err != nil || !bytes.Equal(a, b) {
					t.Errorf("%s was touched by a refused shred", n)
				}
			}
		})
	}
	_, d, _, snap := setup(t, 10)
	if _, err := Shred(d, "../x", snap, 1); err == nil {
		t.Error("accepted a path")
	}
}

func TestFilesystem(t *testing.T) {
	f, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	name, be, reason, err := Filesystem(int(f.Fd()))
	if err != nil || name == "" || be != (reason != "") {
		t.Errorf("Filesystem = %q %v %q %v", name, be, reason, err)
	}
	t.Logf("temp dir filesystem: %s, best effort %v %s", name, be, reason)
}

// BenchmarkShred1GiB shreds a 1 GiB file with one pass (MB/s is of the
// file size).
func BenchmarkShred1GiB(b *testing.B) {
	const size = 1 << 30
	b.SetBytes(size)
	for b.Loop() {
		b.StopTimer()
		_, d, name, snap := setup(b, size)
		b.StartTimer()
		if _, err := Shred(d, name, snap, 1); err != nil {
			b.Fatal(err)
		}
	}
}

// TestClaimNeverOverwritesAtTheName: Claim only renames; a crash after it
// leaves the intact archive under its debris name and the archive's name
// free, so a new archive written there is never touched by Destroy.
func TestClaimNeverOverwritesAtTheName(t *testing.T) {
	dir, d, name, snap := setup(t, 1<<20)
	orig, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	debris := DebrisName([]byte("version-1"))
	deb, err := Claim(d, name, debris, snap)
	if err != nil {
		t.Fatal(err)
	}
	deb.Close() // "crash": nothing destroyed yet
	if _, err := os.Lstat(filepath.Join(dir, name)); !os.IsNotExist(err) {
		t.Fatalf("archive name still exists after Claim: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, debris)); !bytes.Equal(b, orig) {
		t.Fatal("Claim changed the content")
	}
	fresh := []byte("a new archive the runtime wrote at the same name")
	if err := os.WriteFile(filepath.Join(dir, name), fresh, 0o600); err != nil {
		t.Fatal(err)
	}
	// Resume: only the debris is destroyed.
	deb, err = OpenDebris(d, debris)
	if err != nil {
		t.Fatal(err)
	}
	defer deb.Close()
	if _, err := deb.Destroy(1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, debris)); !os.IsNotExist(err) {
		t.Errorf("debris left: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(b, fresh) {
		t.Error("the new archive at the name was touched")
	}
}

func TestDebrisNames(t *testing.T) {
	a, b := DebrisName([]byte("x\x00version")), DebrisName([]byte("x\x00version"))
	if a != b || !IsDebris(a) || a == DebrisName([]byte("y")) {
		t.Errorf("DebrisName not stable or not distinct: %s %s", a, b)
	}
	for _, n := range []string{"checkpoint-a.tar", DebrisPrefix, "x/" + DebrisPrefix + "1", ".ckvault-shredder"} {
		if IsDebris(n) {
			t.Errorf("IsDebris(%q)", n)
		}
	}
	_, d, name, snap := setup(t, 10)
	if _, err := Claim(d, name, "not-debris", snap); err == nil {
		t.Error("Claim accepted a name that is not a debris name")
	}
	if _, err := OpenDebris(d, name); err == nil {
		t.Error("OpenDebris opened an archive name")
	}
}

// TestOpenDebrisRefusals: a symlink or a hard-linked file under a debris
// name is not destroyed.
func TestOpenDebrisRefusals(t *testing.T) {
	dir, d, name, _ := setup(t, 4096)
	link := DebrisPrefix + "link"
	if err := os.Symlink(name, filepath.Join(dir, link)); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDebris(d, link); err == nil {
		t.Error("OpenDebris followed a symlink")
	}
	hard := DebrisPrefix + "hard"
	if err := os.Link(filepath.Join(dir, name), filepath.Join(dir, hard)); err != nil {
		t.Fatal(err)
	}
	deb, err := OpenDebris(d, hard)
	if err != nil {
		t.Fatal(err)
	}
	defer deb.Close()
	if _, err := deb.Destroy(1); !errors.Is(err, ErrChanged) {
		t.Errorf("Destroy of a hard-linked debris: %v, want ErrChanged", err)
	}
	if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Size() != 4096 {
		t.Errorf("the other link was damaged: %v", err)
	}
}

// TestPutBack: a file Claim moved by mistake goes back to its name, or
// next to it as another archive name when the name is taken again; it is
// never left under a debris name.
func TestPutBack(t *testing.T) {
	dir, d, name, _ := setup(t, 100)
	debris := DebrisName([]byte("v"))
	if err := os.Rename(filepath.Join(dir, name), filepath.Join(dir, debris)); err != nil {
		t.Fatal(err)
	}
	if err := putBack(int(d.Fd()), name, debris); !errors.Is(err, ErrChanged) {
		t.Fatalf("putBack: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, name)); err != nil {
		t.Fatalf("not put back: %v", err)
	}
	if err := os.Rename(filepath.Join(dir, name), filepath.Join(dir, debris)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), []byte("third"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := putBack(int(d.Fd()), name, debris)
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("putBack: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
		if IsDebris(e.Name()) {
			t.Errorf("left under a debris name: %s", e.Name())
		}
	}
	if len(names) != 2 {
		t.Errorf("directory holds %v; want the third file and the displaced one", names)
	}
	t.Log(err)
}
