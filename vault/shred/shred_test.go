package shred

import (
	"bytes"
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
	for off := 0; off+4096 <= size; off += 4096 {
		if bytes.Equal(seen[off:off+4096], orig[off:off+4096]) {
			t.Fatalf("block at %d not overwritten", off)
		}
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
