package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

func waitVaulted(t testing.TB, r *running, name string, timeout time.Duration) *Progress {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	p, err := r.d.WaitVaulted(ctx, name)
	if err != nil {
		t.Fatalf("waiting for %s: %v", name, err)
	}
	return p
}

// checkVaulted verifies the objects of p against the original plaintext
// bytes: manifest signature and key binding, ciphertext digest, decryption.
func checkVaulted(t testing.TB, e *env, st store.Store, p *Progress, plain []byte) *manifest.Manifest {
	t.Helper()
	ctx := context.Background()
	objs := manifest.ObjectsFor(p.Object)
	get := func(k string) []byte {
		o, err := st.Open(ctx, k)
		if err != nil {
			t.Fatalf("opening %s: %v", k, err)
		}
		defer o.Close()
		b, err := io.ReadAll(o)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	trusted, err := signing.LoadTrustedKeys(filepath.Join(e.dir, "signing.pub"))
	must(t, err)
	m, err := manifest.Verify(get(objs.Manifest), get(objs.ManifestSig), trusted, p.Object)
	if err != nil {
		t.Fatalf("manifest does not verify: %v", err)
	}
	if _, err := manifest.Verify(get(objs.Manifest), get(objs.ManifestBundle), trusted, p.Object); err != nil {
		t.Fatalf("manifest bundle does not verify: %v", err)
	}
	ct := get(objs.Ciphertext)
	if err := m.CheckCiphertext(sha256.Sum256(ct), int64(len(ct))); err != nil {
		t.Fatal(err)
	}
	if _, err := m.VerifyCiphertextSignature(trusted, get(objs.CiphertextSig)); err != nil {
		t.Fatal(err)
	}
	ids, err := envelope.LoadIdentities([]string{e.identity}, envelope.IdentityOptions{})
	must(t, err)
	pr, err := envelope.Decrypt(bytes.NewReader(ct), ids...)
	must(t, err)
	got, err := io.ReadAll(pr)
	must(t, err)
	if !bytes.Equal(got, plain) {
		t.Fatalf("decrypted archive differs from the original (%d vs %d bytes)", len(got), len(plain))
	}
	if err := m.CheckPlaintext(sha256.Sum256(got), int64(len(got))); err != nil {
		t.Fatal(err)
	}
	return m
}

func openStore(t testing.TB, e *env) store.Store {
	st, err := storeconfig.Open(e.cfg.Store, quietLogger(t))
	must(t, err)
	return st
}

func archiveBytes(t testing.TB, o samplearchive.Options) []byte {
	var b bytes.Buffer
	must(t, samplearchive.Write(&b, o))
	return b.Bytes()
}

func TestVaultBothEngines(t *testing.T) {
	e := newEnv(t, envOpt{})
	r := startDaemon(t, e, Options{})
	st := openStore(t, e)
	for i, eng := range []samplearchive.Engine{samplearchive.CRIO, samplearchive.Containerd} {
		o := samplearchive.Options{Engine: eng, Namespace: "team-a", Pod: fmt.Sprintf("web-%d", i), Container: "app-x", Seed: int64(i),
			MemoryBytes: 300 << 10, DotSlash: i == 1}
		plain := archiveBytes(t, o)
		name := samplearchive.Filename(o)
		must(t, os.WriteFile(filepath.Join(e.ckDir, name), plain, 0o600))
		p := waitVaulted(t, r, name, 20*time.Second)
		if p.Stage != StageShredded {
			t.Fatalf("%s: stage %s, want shredded", name, p.Stage)
		}
		if _, err := os.Lstat(filepath.Join(e.ckDir, name)); !errors.Is(err, os.ErrNotExist) {
			fi, _ := os.Lstat(filepath.Join(e.ckDir, name))
			t.Fatalf("%s still exists after vaulting: %v (size %d, files %v)", name, err, fi.Size(), listTars(t, e.ckDir))
		}
		m := checkVaulted(t, e, st, p, plain)
		if m.Namespace != "team-a" || m.Pod != fmt.Sprintf("web-%d", i) || m.Container != "app-x" || m.Checkpoint.Engine != eng.String() && !(eng == samplearchive.CRIO && m.Checkpoint.Engine == "cri-o") {
			t.Errorf("manifest identity %s/%s/%s engine %s", m.Namespace, m.Pod, m.Container, m.Checkpoint.Engine)
		}
	}
	must(t, r.stop())
	recs := trail(t, e)
	checkOrder(t, recs)
	// Every step of the pipeline is in the trail.
	for _, a := range []string{"started", "config-loaded", "detected", "admitted", "sealed", "uploaded", "proven", "shredded", "stopped"} {
		found := false
		for _, rec := range recs {
			found = found || rec.Action == a
		}
		if !found {
			t.Errorf("no %q record in the audit trail", a)
		}
	}
}

// checkOrder asserts the invariant on a trail: for every subject, each
// "shredded" intent is preceded by a "proven" record for the same object.
func checkOrder(t testing.TB, recs []audit.Record) {
	t.Helper()
	proven := map[string]bool{}
	for _, r := range recs {
		switch r.Action {
		case "proven":
			proven[r.Detail["object"]] = true
		case "shredded":
			if !proven[r.Detail["object"]] {
				t.Fatalf("seq %d: %s shredded (object %s) before any proven record", r.Seq, r.Subject, r.Detail["object"])
			}
		}
	}
}

// TestNotAdmittedWhileOpen writes an archive as the runtimes do: in place,
// in pieces with pauses, held open; it must not be admitted until closed.
func TestNotAdmittedWhileOpen(t *testing.T) {
	e := newEnv(t, envOpt{rescan: "1s"})
	r := startDaemon(t, e, Options{})
	o := samplearchive.Options{Namespace: "default", Seed: 7, MemoryBytes: 2 << 20}
	plain := archiveBytes(t, o)
	name := samplearchive.Filename(o)
	path := filepath.Join(e.ckDir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	must(t, err)
	for off := 0; off < len(plain); off += 256 << 10 {
		_, err := f.Write(plain[off:min(off+256<<10, len(plain))])
		must(t, err)
		time.Sleep(150 * time.Millisecond)
	}
	// Complete on disk, still held open: not admitted (no record at all).
	time.Sleep(1500 * time.Millisecond)
	all, err := r.d.state.All()
	must(t, err)
	if len(all) != 0 {
		t.Fatalf("archive held open for writing was processed: %+v", all)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	closed := time.Now()
	must(t, f.Close())
	p := waitVaulted(t, r, name, 20*time.Second)
	t.Logf("closed -> vaulted and shredded in %v", time.Since(closed))
	checkVaulted(t, e, openStore(t, e), p, plain)
}

// TestStaleTail: a shorter archive written in place over a longer old file
// leaves the old file's tail behind; it must be rejected, not vaulted as if
// whole, and left in place.
func TestStaleTail(t *testing.T) {
	e := newEnv(t, envOpt{})
	r := startDaemon(t, e, Options{})
	o := samplearchive.Options{Namespace: "default", Seed: 3, MemoryBytes: 128 << 10}
	plain := archiveBytes(t, o)
	name := samplearchive.Filename(o)
	path := filepath.Join(e.ckDir, name)
	// The old, longer file: written with a temporary name and renamed in
	// while the daemon is not looking at it (it is a dotfile until then).
	old := bytes.Repeat([]byte{0xAB}, len(plain)+64<<10)
	tmp := filepath.Join(e.ckDir, ".old")
	must(t, os.WriteFile(tmp, old, 0o600))
	f, err := os.OpenFile(tmp, os.O_RDWR, 0o600) // no O_TRUNC, as the runtimes
	must(t, err)
	_, err = f.Write(plain)
	must(t, err)
	must(t, f.Close())
	must(t, os.Rename(tmp, path))
	_, err = r.d.WaitVaulted(context.Background(), name)
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("stale-tail archive: %v, want rejected", err)
	}
	got, err := os.ReadFile(path)
	must(t, err)
	if len(got) != len(old) {
		t.Fatalf("rejected file was modified")
	}
	must(t, r.stop())
	recs := trail(t, e)
	if n := countActions(recs, name, "rejected"); n != 1 {
		t.Fatalf("%d rejected records, want 1", n)
	}
	for _, rec := range recs {
		if rec.Action == "rejected" && rec.Detail["reason"] != "trailing-data" {
			t.Errorf("reason %q, want trailing-data", rec.Detail["reason"])
		}
	}
}

// TestHostileEntries: each is rejected, audited once across rescans, left in
// place, and nothing outside the directory is read or touched.
func TestHostileEntries(t *testing.T) {
	e := newEnv(t, envOpt{rescan: "1s"})
	outside := filepath.Join(e.dir, "outside-secret.tar")
	good := archiveBytes(t, samplearchive.Options{Seed: 11})
	must(t, os.WriteFile(outside, good, 0o600))
	before, err := os.Stat(outside)
	must(t, err)
	beforeAtime := before.Sys().(*syscall.Stat_t).Atim

	must(t, os.Symlink(outside, filepath.Join(e.ckDir, "checkpoint-evil_default-app-2026-03-13T21:43:06Z.tar")))
	hard := filepath.Join(e.ckDir, "checkpoint-hard_default-app-2026-03-13T21:43:06Z.tar")
	must(t, os.WriteFile(hard, good, 0o600))
	must(t, os.Link(hard, filepath.Join(e.dir, "second-link")))
	must(t, syscall.Mkfifo(filepath.Join(e.ckDir, "checkpoint-fifo_default-app-2026-03-13T21:43:06Z.tar"), 0o600))
	must(t, os.Mkdir(filepath.Join(e.ckDir, "checkpoint-dir_default-app-2026-03-13T21:43:06Z.tar"), 0o700))
	must(t, os.WriteFile(filepath.Join(e.ckDir, "checkpoint-text_default-app-2026-03-13T21:43:06Z.tar"), bytes.Repeat([]byte("not a tar\n"), 500), 0o600))
	must(t, os.WriteFile(filepath.Join(e.ckDir, "checkpoint-cut_default-app-2026-03-13T21:43:06Z.tar"), good[:len(good)-2048], 0o600))
	cutAtHeader := archiveBytes(t, samplearchive.Options{Seed: 12, Override: map[string][]byte{"zz-last": make([]byte, 512)}})
	must(t, os.WriteFile(filepath.Join(e.ckDir, "checkpoint-cuthdr_default-app-2026-03-13T21:43:06Z.tar"), cutAtHeader[:len(cutAtHeader)-1024-1024], 0o600))
	noSpec := archiveBytes(t, samplearchive.Options{Seed: 13, Omit: []string{"spec.dump"}})
	must(t, os.WriteFile(filepath.Join(e.ckDir, "checkpoint-nospec_default-app-2026-03-13T21:43:06Z.tar"), noSpec, 0o600))

	want := map[string]string{
		"checkpoint-evil_default-app-2026-03-13T21:43:06Z.tar":   "symlink",
		"checkpoint-hard_default-app-2026-03-13T21:43:06Z.tar":   "hardlinked",
		"checkpoint-fifo_default-app-2026-03-13T21:43:06Z.tar":   "not-regular",
		"checkpoint-dir_default-app-2026-03-13T21:43:06Z.tar":    "not-regular",
		"checkpoint-text_default-app-2026-03-13T21:43:06Z.tar":   "not-a-checkpoint",
		"checkpoint-cut_default-app-2026-03-13T21:43:06Z.tar":    "truncated",
		"checkpoint-cuthdr_default-app-2026-03-13T21:43:06Z.tar": "truncated",
		"checkpoint-nospec_default-app-2026-03-13T21:43:06Z.tar": "not-a-checkpoint",
	}
	r := startDaemon(t, e, Options{})
	for name := range want {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := r.d.WaitVaulted(ctx, name)
		cancel()
		if !errors.Is(err, ErrRejected) {
			t.Errorf("%s: %v, want rejected", name, err)
		}
	}
	time.Sleep(2500 * time.Millisecond) // at least two rescans
	must(t, r.stop())

	recs := trail(t, e)
	for name, reason := range want {
		if n := countActions(recs, name, "rejected"); n != 1 {
			t.Errorf("%s: %d rejected records, want exactly 1", name, n)
		}
		for _, rec := range recs {
			if rec.Subject == name && rec.Action == "rejected" && rec.Detail["reason"] != reason {
				t.Errorf("%s: reason %q, want %q", name, rec.Detail["reason"], reason)
			}
		}
		if _, err := os.Lstat(filepath.Join(e.ckDir, name)); err != nil {
			t.Errorf("%s was not left in place: %v", name, err)
		}
	}
	after, err := os.Stat(outside)
	must(t, err)
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || after.Sys().(*syscall.Stat_t).Atim != beforeAtime {
		t.Errorf("the symlink's target outside the directory was touched or read")
	}
	// Nothing was left in the store for any of them.
	st := openStore(t, e)
	objs, _, err := st.List(context.Background(), "", "", 100)
	must(t, err)
	for _, o := range objs {
		if !bytes.HasPrefix([]byte(o.Key), []byte("audit/")) {
			t.Errorf("object %s left in the store by a rejected file", o.Key)
		}
	}
}
