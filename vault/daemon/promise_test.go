package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// promiseEnvs are the stores the core promise is tested on: the file store,
// and the production configuration — MinIO over TLS with compliance Object
// Lock on a versioned bucket.
func promiseEnvs(t *testing.T, run func(t *testing.T, e *env)) {
	t.Run("file", func(t *testing.T) { run(t, newEnv(t, envOpt{})) })
	t.Run("minio-compliance-lock", func(t *testing.T) {
		srv := testservers.Shared(t, testservers.MinIO)
		bucket := srv.NewBucket(t, true)
		run(t, s3EnvBucket(t, srv, bucket, "promise", envOpt{storeExtra: "  objectLock: {mode: compliance, days: 1}\n"}))
	})
}

// TestSameSecondSameSize: an idle container checkpointed twice in one
// second gives two archives of equal size at the same path (the kubelet
// reuses it). Both must be vaulted, under different keys, and both fetch
// back byte-identical. Format v1 derived one key for both, and the second
// upload replaced the first, which had already been shredded.
func TestSameSecondSameSize(t *testing.T) {
	promiseEnvs(t, func(t *testing.T, e *env) {
		r := startDaemon(t, e, Options{})
		st := openStore(t, e)
		o := samplearchive.Options{Namespace: "idle", Pod: "worker-0", Container: "app", Seed: 1, MemoryBytes: 200 << 10}
		first := archiveBytes(t, o)
		// The same container a second later: other memory, same size.
		pages := bytes.Repeat([]byte{0x5a}, 200<<10)
		o2 := o
		o2.Override = map[string][]byte{"checkpoint/pages-1.img": pages}
		second := archiveBytes(t, o2)
		if len(first) != len(second) || bytes.Equal(first, second) {
			t.Fatalf("test archives must differ with equal sizes: %d, %d bytes", len(first), len(second))
		}
		name := samplearchive.Filename(o)
		path := filepath.Join(e.ckDir, name)

		must(t, os.WriteFile(path, first, 0o600))
		p1 := waitVaulted(t, r, name, 30*time.Second)
		// The runtime writes the second checkpoint into the same path.
		must(t, os.WriteFile(path, second, 0o600))
		var p2 *Progress
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			p2 = waitVaulted(t, r, name, 30*time.Second)
			if p2.Object != p1.Object {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if p2.Object == p1.Object {
			t.Fatalf("both archives vaulted under %s", p1.Object)
		}
		m1 := checkVaulted(t, e, st, p1, first)
		m2 := checkVaulted(t, e, st, p2, second)
		if m1.OriginalName != m2.OriginalName || !m1.CheckpointedAt.Equal(m2.CheckpointedAt.Time) || m1.Plaintext.Size != m2.Plaintext.Size {
			t.Fatalf("the two archives should agree in every key input: %+v / %+v", m1, m2)
		}
	})
}

// faultyStore wraps a real store and fails chosen Puts: before anything is
// sent, or after the object is stored (a lost response — the case Object
// Lock makes hard, since the stored object can then never be replaced).
type faultyStore struct {
	store.Store
	mu     sync.Mutex
	faults []*fault
}

type fault struct {
	pod, suffix string
	afterStore  bool
	left        int
	hit         int
}

func (f *faultyStore) match(key string) *fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range f.faults {
		if strings.Contains(key, "/"+x.pod+"/") && strings.HasSuffix(key, x.suffix) && x.left > 0 {
			if b, _ := manifest.BaseKeyOf(key); b+x.suffix != key {
				continue // ".sig" must not match ".manifest.sig"
			}
			x.left--
			x.hit++
			return x
		}
	}
	return nil
}

func (f *faultyStore) Put(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	x := f.match(key)
	if x == nil {
		return f.Store.Put(ctx, key, r, size, opts)
	}
	if x.afterStore {
		if _, err := f.Store.Put(ctx, key, r, size, opts); err != nil {
			return store.ObjectInfo{}, err
		}
		return store.ObjectInfo{}, fmt.Errorf("injected: connection reset after %s was stored", key)
	}
	return store.ObjectInfo{}, fmt.Errorf("injected: connection refused before %s was sent", key)
}

// TestFaultsOnEveryObject fails the Put of each of the six objects (before
// sending, and after the store kept it) and the signing, twice each, in
// the production configuration. Every archive must still be vaulted once,
// fetched back byte-identical, and leave nothing local; under Object Lock
// the objects of abandoned attempts stay, each named in an audit record.
func TestFaultsOnEveryObject(t *testing.T) {
	promiseEnvs(t, func(t *testing.T, e *env) {
		base, err := storeconfig.OpenTuned(e.cfg.Store, quietLogger(t), UploadTuning)
		must(t, err)
		fs := &faultyStore{Store: base}
		suffixes := []string{manifest.SuffixCiphertext, manifest.SuffixCiphertextSig, manifest.SuffixCiphertextBundle,
			manifest.SuffixManifestSig, manifest.SuffixManifestBundle, manifest.SuffixManifest}
		type drop struct {
			name  string
			plain []byte
		}
		var drops []drop
		add := func(pod string) {
			o := samplearchive.Options{Namespace: "faults", Pod: pod, Container: "app", Seed: int64(len(drops)), MemoryBytes: 100 << 10}
			drops = append(drops, drop{samplearchive.Filename(o), archiveBytes(t, o)})
		}
		for i, sfx := range suffixes {
			for _, after := range []bool{false, true} {
				pod := fmt.Sprintf("put-%d-%v", i, after)
				fs.faults = append(fs.faults, &fault{pod: pod, suffix: sfx, afterStore: after, left: 2})
				add(pod)
			}
		}
		signFaults := 2
		var signMu sync.Mutex
		testFaultSign = func(object string) error {
			signMu.Lock()
			defer signMu.Unlock()
			if strings.Contains(object, "/sign-fault/") && signFaults > 0 {
				signFaults--
				return errors.New("injected: signing service unavailable")
			}
			return nil
		}
		t.Cleanup(func() { testFaultSign = nil })
		add("sign-fault")

		r := startDaemon(t, e, Options{Store: fs, MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond})
		for _, d := range drops {
			must(t, os.WriteFile(filepath.Join(e.ckDir, d.name), d.plain, 0o600))
		}
		for _, d := range drops {
			p := waitVaulted(t, r, d.name, 90*time.Second)
			checkVaulted(t, e, base, p, d.plain)
		}
		for _, x := range fs.faults {
			if x.hit != 2 {
				t.Errorf("fault on %s%s (after store %v) hit %d times, want 2", x.pod, x.suffix, x.afterStore, x.hit)
			}
		}
		if signFaults != 0 {
			t.Errorf("%d signing faults not hit", signFaults)
		}
		if left := listTars(t, e.ckDir); len(left) > 0 {
			t.Errorf("archives left local: %v", left)
		}
		must(t, r.stop())
		var names []string
		for _, d := range drops {
			names = append(names, d.name)
		}
		checkExactlyOnce(t, base, names, trail(t, e), e.cfg.Store.ObjectLock != nil)
	})
}
