package gc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
	"github.com/checkpoint-vault/ckvault/vault/store/s3store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	if os.Getenv(benchChildEnv) != "" {
		os.Exit(runBenchChild())
	}
	os.Exit(testservers.Main(m))
}

// backend makes fresh, empty stores of one kind.
type backend struct {
	name string
	new  func(t testing.TB) Store
}

func fileBackend() backend {
	return backend{"file", func(t testing.TB) Store {
		s, err := filestore.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}}
}

func s3Backend(kind testservers.Kind) backend {
	return backend{string(kind), func(t testing.TB) Store {
		srv := testservers.Shared(t, kind)
		return s3For(t, srv, storetest.RandomPrefix())
	}}
}

func s3For(t testing.TB, srv *testservers.Server, prefix string) *s3store.Store {
	s, err := s3store.New(s3store.Config{
		URL:         srv.StoreURL(srv.Bucket, prefix),
		CAFile:      srv.CAFile,
		Credentials: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		PathStyle:   "path",
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// backends are every store GC runs on: the file store, MinIO and
// versitygw (the S3 ones skip without their binaries, and fail when
// CKVAULT_REQUIRE_TOOLS is set).
func backends() []backend {
	return []backend{fileBackend(), s3Backend(testservers.MinIO), s3Backend(testservers.VersityGW)}
}

// keys are a signing key pair for test vaults.
type keys struct {
	signer  *signing.Signer
	trusted *signing.TrustedKeys
	pubFile string
	keyFile string
}

var (
	keysOnce sync.Once
	keysVal  *keys
	keysErr  error
)

// testKeys returns one key pair per test binary, in a directory that
// outlives single tests (the crash test's children read it).
func testKeys(t testing.TB) *keys {
	keysOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ckvault-gc-keys-")
		if err != nil {
			keysErr = err
			return
		}
		keysVal, keysErr = keysIn(dir)
	})
	if keysErr != nil {
		t.Fatal(keysErr)
	}
	return keysVal
}

func keysIn(dir string) (*keys, error) {
	priv, pub, err := signing.GenerateKeyPair(nil)
	if err != nil {
		return nil, err
	}
	k := &keys{keyFile: filepath.Join(dir, "signing.key"), pubFile: filepath.Join(dir, "signing.pub")}
	if err := os.WriteFile(k.keyFile, priv, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(k.pubFile, pub, 0o644); err != nil {
		return nil, err
	}
	if k.signer, err = signing.LoadSigner(context.Background(), k.keyFile, func() ([]byte, error) { return nil, nil }); err != nil {
		return nil, err
	}
	if k.trusted, err = signing.ParseTrustedKeys(pub); err != nil {
		return nil, err
	}
	return k, nil
}

// spec describes one synthetic vaulted checkpoint.
type spec struct {
	ns, pod, ctr, node string
	at                 time.Time
	// size is the ciphertext size recorded in the manifest and stored.
	size      int64
	retention store.Retention
	pin       bool
	seq       int // makes the container id, hence the key, unique
}

// fingerprint is a syntactically valid recipient fingerprint.
var fingerprint = envelope.FingerprintPrefix + "aaaaaaaaaaaaaaaa"

// putCheckpoint writes the six objects of one checkpoint the way the
// daemon does (ciphertext first, manifest last) with a manifest signed by
// signer, and returns its base key. The ciphertext is random bytes of the
// recorded size: GC never decrypts, it only needs the manifest's claims to
// verify.
func putCheckpoint(t testing.TB, st store.Store, signer *signing.Signer, s spec) string {
	t.Helper()
	ctx := context.Background()
	if s.node == "" {
		s.node = "node-a"
	}
	if s.size == 0 {
		s.size = 1000
	}
	plain := s.size - 200 // an age header is about 200 bytes
	for envelope.PayloadSize(plain) >= s.size-100 {
		plain--
	}
	m := &manifest.Manifest{
		Format: manifest.FormatV1, Namespace: s.ns, Pod: s.pod, Container: s.ctr, Node: s.node,
		CheckpointedAt: manifest.Time{Time: s.at.UTC().Truncate(time.Second)},
		VaultedAt:      manifest.Time{Time: s.at.UTC().Truncate(time.Second).Add(time.Minute)},
		OriginalName:   fmt.Sprintf("checkpoint-%s_%s-%s-%d.tar", s.pod, s.ns, s.ctr, s.seq),
		Plaintext:      manifest.Digest{SHA256: strings.Repeat("ab", 32), Size: plain},
		Ciphertext:     manifest.Digest{SHA256: strings.Repeat("cd", 32), Size: s.size},
		Recipients:     []string{fingerprint},
		Checkpoint:     manifest.Checkpoint{Engine: "cri-o", Runtime: "runc", ContainerID: fmt.Sprintf("c%06d", s.seq)},
		ToolVersion:    "gc-test",
	}
	// Both formats readers accept: v2 (random short id, what the daemon
	// writes now) for even seq, v1 (derived short id) for odd.
	var err error
	if s.seq%2 == 0 {
		m.Format = manifest.FormatV2
		m.Object, err = manifest.NewKey(m.KeyInput())
	} else {
		m.Object, err = manifest.BaseKey(m.KeyInput())
	}
	if err != nil {
		t.Fatal(err)
	}
	signed, err := manifest.Sign(ctx, m, signer)
	if err != nil {
		t.Fatal(err)
	}
	o := m.Objects()
	opts := store.PutOptions{Retention: s.retention}
	for _, x := range []struct {
		key  string
		data []byte
	}{
		{o.Ciphertext, storetest.Data(uint64(s.seq), s.size)},
		{o.CiphertextSig, signed.CiphertextSig.Sig},
		{o.CiphertextBundle, signed.CiphertextSig.Bundle},
		{o.ManifestSig, signed.ManifestSig.Sig},
		{o.ManifestBundle, signed.ManifestSig.Bundle},
		{o.Manifest, signed.Manifest},
	} {
		if _, err := st.Put(ctx, x.key, bytes.NewReader(x.data), int64(len(x.data)), opts); err != nil {
			t.Fatalf("put %s: %v", x.key, err)
		}
	}
	if s.pin {
		if err := Pin(ctx, st, discard{}, "test", m.Object, true); err != nil {
			t.Fatal(err)
		}
	}
	return m.Object
}

// putAll writes many checkpoints concurrently and returns their bases in
// the order of specs.
func putAll(t testing.TB, st store.Store, signer *signing.Signer, specs []spec) []string {
	t.Helper()
	out := make([]string, len(specs))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range specs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = putCheckpoint(t, st, signer, specs[i])
		}(i)
	}
	wg.Wait()
	return out
}

// discard is an Auditor for fixtures (the pins a test sets up are not
// what it examines).
type discard struct{}

func (discard) Append(context.Context, audit.Record) (uint64, error) { return 1, nil }

// openLog opens a fresh audit trail for a test.
func openLog(t testing.TB) *audit.Log {
	t.Helper()
	l, err := audit.Open(filepath.Join(privateDir(t), "audit.db"), audit.Options{Node: "gc-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// state summarises a store: for each base key, which suffixes have a
// latest non-marker version, and how many versions (markers included) it
// has; plus every other key.
type state struct {
	bases  map[string]map[string]bool
	counts map[string]int
	other  []string
}

func stateOf(t testing.TB, st Store) state {
	t.Helper()
	s := state{bases: map[string]map[string]bool{}, counts: map[string]int{}}
	err := st.ListVersions(context.Background(), "", func(v store.Version) error {
		base, ok := manifest.BaseKeyOf(v.Key)
		if !ok || strings.HasPrefix(v.Key, IntentPrefix) {
			if v.IsLatest {
				s.other = append(s.other, v.Key)
			}
			return nil
		}
		if s.bases[base] == nil {
			s.bases[base] = map[string]bool{}
		}
		s.counts[base]++
		if v.IsLatest && !v.DeleteMarker {
			s.bases[base][v.Key[len(base):]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(s.other)
	return s
}

// complete lists the bases that still have a manifest.
func (s state) complete() []string {
	var out []string
	for b, sfx := range s.bases {
		if sfx[manifest.SuffixManifest] {
			out = append(out, b)
		}
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func diff(got, want []string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, x := range got {
		g[x] = true
	}
	for _, x := range want {
		w[x] = true
	}
	var b strings.Builder
	for _, x := range sorted(got) {
		if !w[x] {
			fmt.Fprintf(&b, "  unexpected %s\n", x)
		}
	}
	for _, x := range sorted(want) {
		if !g[x] {
			fmt.Fprintf(&b, "  missing    %s\n", x)
		}
	}
	return b.String()
}

// privateDir is a temporary directory of mode 0700, as the audit trail
// insists.
func privateDir(t testing.TB) string {
	d := t.TempDir()
	if err := os.Chmod(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return d
}
