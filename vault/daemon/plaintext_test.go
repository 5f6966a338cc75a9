package daemon

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

// TestNoPlaintextLeftBehind is the invariant "no plaintext checkpoint byte
// is written anywhere but the original file and a responder's verified
// output": after the daemon vaults an archive, no file anywhere under the
// node's directories (checkpoints, state, store, keys) or the process's
// temporary directory holds any window of the archive's memory pages —
// not even a rejected archive's upload, and not the shredded original.
func TestNoPlaintextLeftBehind(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	e := newEnv(t, envOpt{})
	r := startDaemon(t, e, Options{})

	good := samplearchive.Options{Namespace: "leak", Pod: "web", Container: "app", Seed: 7, MemoryBytes: 1 << 20}
	// A stale tail: the same archive followed by old non-zero bytes. It is
	// read and (partly) uploaded before the parser sees the tail; the
	// daemon must withdraw the upload and leave only the original.
	stale := samplearchive.Options{Namespace: "leak", Pod: "db", Container: "app", Seed: 8, MemoryBytes: 1 << 20}

	plain := archiveBytes(t, good)
	stalePlain := append(archiveBytes(t, stale), bytes.Repeat([]byte{0xA5}, 4096)...)
	goodName, staleName := samplearchive.Filename(good), samplearchive.Filename(stale)
	must(t, os.WriteFile(filepath.Join(e.ckDir, staleName), stalePlain, 0o600))
	must(t, os.WriteFile(filepath.Join(e.ckDir, goodName), plain, 0o600))

	if p := waitVaulted(t, r, goodName, 30*time.Second); p.Stage != StageShredded {
		t.Fatalf("%s: stage %s, want shredded", goodName, p.Stage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.d.WaitVaulted(ctx, staleName); !errors.Is(err, ErrRejected) {
		t.Fatalf("stale-tail archive: %v, want rejected", err)
	}
	must(t, r.stop())
	if n := countActions(trail(t, e), staleName, "rejected"); n != 1 {
		t.Fatalf("%d rejected records for %s, want 1", n, staleName)
	}

	// Windows from the pseudo-random memory pages of both archives: any
	// copy of page data, however partial, contains some of them.
	var needles [][]byte
	for _, src := range [][]byte{plain, stalePlain[:len(stalePlain)-4096]} {
		for off := len(src) / 8; off < len(src)-64; off += len(src) / 8 {
			needles = append(needles, src[off:off+32])
		}
	}
	scan := func(root string, allow string) {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() || path == allow {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, n := range needles {
				if bytes.Contains(b, n) {
					t.Errorf("plaintext checkpoint bytes found in %s", path)
					return nil
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The rejected archive is left in place, as it was: that file is the
	// original and the only place its bytes may be.
	scan(e.dir, filepath.Join(e.ckDir, staleName))
	scan(tmp, "")
	if got, err := os.ReadFile(filepath.Join(e.ckDir, staleName)); err != nil || !bytes.Equal(got, stalePlain) {
		t.Errorf("the rejected archive was changed or removed: %v", err)
	}
}
