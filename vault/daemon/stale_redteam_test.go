package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// TestSealedVersionLeavesItsName: once an archive is sealed (its
// ciphertext stored and its unsigned manifest recorded, StageSealed) the
// file is no longer needed to publish it. If the publication fails (here
// the signer is down) and meanwhile the file leaves its name — removed by
// an operator or a checkpoint garbage collector, rewritten in place by the
// runtime (two checkpoints in one second), or removed while the daemon is
// down — the sealed version must still be published from its record once
// the signer is back, and its progress must end. Before the fix only
// versions in the shredding stage were settled when their name no longer
// held them: the sealed version stayed "sealed" forever, its manifest was
// never stored, and its ciphertext became an orphan for GC to delete.
func TestSealedVersionLeavesItsName(t *testing.T) {
	for _, how := range []string{"removed", "rewritten", "removed-while-down"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t, envOpt{})
			var mu sync.Mutex
			down := true
			hit := make(chan struct{}, 1)
			testFaultSign = func(object string) error {
				mu.Lock()
				defer mu.Unlock()
				if !down {
					return nil
				}
				select {
				case hit <- struct{}{}:
				default:
				}
				return errors.New("injected: signing service unavailable")
			}
			t.Cleanup(func() { testFaultSign = nil })
			opts := Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
			r := startDaemon(t, e, opts)
			st := openStore(t, e)

			o := samplearchive.Options{Namespace: "stale", Pod: "api-0", Container: "app", Seed: 7, MemoryBytes: 100 << 10}
			first := archiveBytes(t, o)
			name := samplearchive.Filename(o)
			path := filepath.Join(e.ckDir, name)
			must(t, os.WriteFile(path, first, 0o600))
			select {
			case <-hit:
			case <-time.After(30 * time.Second):
				t.Fatal("the archive never reached signing")
			}
			sealed := stageOf(t, r.d, name, StageSealed)

			var second []byte
			switch how {
			case "removed":
				must(t, os.Remove(path))
			case "rewritten":
				o2 := o
				o2.Seed = 8
				o2.MemoryBytes = 120 << 10
				second = archiveBytes(t, o2)
				must(t, os.WriteFile(path, second, 0o600))
			case "removed-while-down":
				must(t, r.stop())
				must(t, os.Remove(path))
			}
			// Let the daemon retry with the signer still down (a removed
			// name is then seen as gone), then bring the signer back.
			time.Sleep(500 * time.Millisecond)
			mu.Lock()
			down = false
			mu.Unlock()
			if how == "removed-while-down" {
				r = startDaemon(t, e, opts)
			}

			objs := manifest.ObjectsFor(sealed.Object)
			deadline := time.Now().Add(20 * time.Second)
			for {
				_, err := st.Stat(context.Background(), objs.Manifest)
				if err == nil {
					break
				}
				if !errors.Is(err, store.ErrNotExist) {
					t.Fatal(err)
				}
				if time.Now().After(deadline) {
					t.Fatalf("the sealed version %s was never published after its file was %s: progress %+v",
						sealed.Object, how, stagesOf(t, r.d, name))
				}
				time.Sleep(100 * time.Millisecond)
			}
			checkVaulted(t, e, st, sealed, first)
			if second != nil {
				p := waitVaulted(t, r, name, 30*time.Second)
				if p.Object == sealed.Object {
					t.Fatalf("the rewritten archive was not vaulted on its own")
				}
				checkVaulted(t, e, st, p, second)
			}
			// Every version of the name ends: nothing stays in progress.
			deadline = time.Now().Add(10 * time.Second)
			for {
				open := 0
				for _, p := range stagesOf(t, r.d, name) {
					if !p.Stage.Terminal() {
						open++
					}
				}
				if open == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("versions of %s still in progress: %+v", name, stagesOf(t, r.d, name))
				}
				time.Sleep(100 * time.Millisecond)
			}
			if left := listTars(t, e.ckDir); len(left) > 0 {
				t.Errorf("archives left local: %v", left)
			}
		})
	}
}

// stageOf returns the progress of name in stage (the test fails if none).
func stageOf(t *testing.T, d *Daemon, name string, stage Stage) *Progress {
	t.Helper()
	for _, p := range stagesOf(t, d, name) {
		if p.Stage == stage {
			return &p
		}
	}
	t.Fatalf("%s has no version in stage %s: %+v", name, stage, stagesOf(t, d, name))
	return nil
}

func stagesOf(t *testing.T, d *Daemon, name string) []Progress {
	t.Helper()
	all, err := d.state.All()
	must(t, err)
	var out []Progress
	for _, p := range all {
		if p.Name == name {
			p.Manifest, p.Signed = nil, nil // keep failure messages short
			out = append(out, p)
		}
	}
	return out
}

// TestAbandonRecordRefused: an attempt whose ciphertext the store kept
// (a lost response) under compliance Object Lock is abandoned on the next
// try; its ciphertext cannot be withdrawn and must be named as an orphan
// in an audit record. If that record is refused (the audit log's disk is
// full, an I/O error), the attempt must not be replaced by a new one:
// before the fix abandon returned silently, process started a new attempt
// whose progress overwrote the old one, and the locked ciphertext stayed
// in the store with no record naming it.
func TestAbandonRecordRefused(t *testing.T) {
	e := newEnv(t, envOpt{})
	plainStore, err := storeconfig.OpenTuned(e.cfg.Store, quietLogger(t), UploadTuning)
	must(t, err)
	// The file store keeps retention as S3 does (a compliance-locked
	// object cannot be deleted); the config refuses objectLock for
	// file://, so apply it here as storeconfig does for S3.
	base := &compliance{plainStore}
	fs := &faultyStore{Store: base, faults: []*fault{{pod: "lost-0", suffix: manifest.SuffixCiphertext, afterStore: true, left: 1}}}
	var mu sync.Mutex
	refused := 0
	testFaultAudit = func(r audit.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if r.Action == "abandoned" && refused == 0 {
			refused++
			return errors.New("injected: no space left on device")
		}
		return nil
	}
	t.Cleanup(func() { testFaultAudit = nil })
	r := startDaemon(t, e, Options{Store: fs, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	o := samplearchive.Options{Namespace: "faults", Pod: "lost-0", Container: "app", Seed: 3, MemoryBytes: 100 << 10}
	plain := archiveBytes(t, o)
	name := samplearchive.Filename(o)
	must(t, os.WriteFile(filepath.Join(e.ckDir, name), plain, 0o600))
	p := waitVaulted(t, r, name, 60*time.Second)
	checkVaulted(t, e, base, p, plain)
	must(t, r.stop())
	if refused != 1 {
		t.Fatalf("the abandoned record was refused %d times, want 1", refused)
	}
	checkExactlyOnce(t, base, []string{name}, trail(t, e), true)
}

// compliance applies one day of compliance retention to every Put.
type compliance struct{ store.Store }

func (c *compliance) Put(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	opts.Retention = store.Retention{Mode: "compliance", Until: time.Now().Add(24 * time.Hour)}
	return c.Store.Put(ctx, key, r, size, opts)
}

// TestProveFindsReplacedObject: an object of an uploaded attempt that is
// replaced in the store before it is proven (someone holding the node's
// write credentials, or a store that ignores create-only) fails the proof
// by size. The attempt is spoiled; it must be abandoned and the archive
// vaulted again under a new key. Before the fix only a missing object
// abandoned the attempt: a replaced one failed the proof on every retry
// for ever, and the plaintext stayed on the node.
func TestProveFindsReplacedObject(t *testing.T) {
	e := newEnv(t, envOpt{})
	st := openStore(t, e)
	var once sync.Once
	testHookStage = func(point string, p *Progress) {
		if point != ptUploadedAudited {
			return
		}
		once.Do(func() {
			k := manifest.ObjectsFor(p.Object).Manifest
			junk := []byte("not the manifest that was signed")
			if _, err := st.Put(context.Background(), k, bytes.NewReader(junk), int64(len(junk)), store.PutOptions{}); err != nil {
				t.Errorf("replacing %s: %v", k, err)
			}
		})
	}
	t.Cleanup(func() { testHookStage = nil })
	r := startDaemon(t, e, Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	o := samplearchive.Options{Namespace: "faults", Pod: "replaced-0", Container: "app", Seed: 5, MemoryBytes: 100 << 10}
	plain := archiveBytes(t, o)
	name := samplearchive.Filename(o)
	must(t, os.WriteFile(filepath.Join(e.ckDir, name), plain, 0o600))
	p := waitVaulted(t, r, name, 20*time.Second)
	checkVaulted(t, e, st, p, plain)
}

// TestPinnedChmodNotRevaulted: a pinned archive stays on the node, vaulted
// once. An operator's chmod (or chown, or a hard link added and removed)
// changes only its ctime; its content is the version that was vaulted.
// It must not be vaulted a second time.
func TestPinnedChmodNotRevaulted(t *testing.T) {
	e := newEnv(t, envOpt{})
	st := openStore(t, e)
	r := startDaemon(t, e, Options{})
	o := samplearchive.Options{Namespace: "hold", Pod: "api-0", Container: "app", Seed: 9, MemoryBytes: 100 << 10}
	plain := archiveBytes(t, o)
	name := samplearchive.Filename(o)
	path := filepath.Join(e.ckDir, name)
	must(t, os.WriteFile(path+".keep", nil, 0o600))
	must(t, os.WriteFile(path, plain, 0o600))
	p := waitVaulted(t, r, name, 20*time.Second)
	if p.Stage != StagePinned {
		t.Fatalf("stage %s, want pinned", p.Stage)
	}
	must(t, os.Chmod(path, 0o400))
	time.Sleep(3 * time.Second)
	must(t, r.stop())
	n := 0
	objs, _, err := st.List(context.Background(), "hold/", "", 1000)
	must(t, err)
	for _, o := range objs {
		if strings.HasSuffix(o.Key, manifest.SuffixManifest) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the pinned archive was vaulted %d times after a chmod, want once", n)
	}
}
