package responder

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

func TestMain(m *testing.M) { os.Exit(testservers.Main(m)) }

// backends are the stores every vault test runs against: the embedded
// file store always, and the real S3 servers where installed.
var backends = []string{"file", string(testservers.MinIO), string(testservers.VersityGW)}

// openStore opens a fresh, empty store of the given backend for one test
// (a new prefix on a shared server).
func openStore(t testing.TB, backend string) store.Store {
	t.Helper()
	var cfg policy.StoreConfig
	if backend == "file" {
		cfg.URL = "file://" + t.TempDir()
	} else {
		srv := testservers.Shared(t, testservers.Kind(backend))
		dir := t.TempDir()
		ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
		if err := os.WriteFile(ak, []byte(srv.AccessKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sk, []byte(srv.SecretKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg = policy.StoreConfig{
			URL: srv.StoreURL(srv.Bucket, prefixFor(t)), CAFile: srv.CAFile, PathStyle: "path",
			AccessKeyFile: ak, SecretKeyFile: sk,
		}
	}
	st, err := storeconfig.Open(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

var (
	prefixMu sync.Mutex
	prefixN  int
)

func prefixFor(t testing.TB) string {
	prefixMu.Lock()
	defer prefixMu.Unlock()
	prefixN++
	return "responder-" + filepath.Base(t.TempDir()) + "-" + string(rune('a'+prefixN%26))
}

// env is a vault with one trusted key set, an audit log and a responder.
type env struct {
	st   store.Store
	keys *testvault.Keys
	dir  string
	log  *audit.Log
	r    *Responder
}

func newEnv(t testing.TB, backend string) *env {
	t.Helper()
	st := openStore(t, backend)
	dir := t.TempDir()
	keys, err := testvault.NewKeys(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(filepath.Join(dir, "state", audit.FileName), audit.Options{Node: "responder-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	return &env{st: st, keys: keys, dir: dir, log: log,
		r: &Responder{Store: st, Trusted: keys.Trusted, Audit: log, Actor: "uid:1000(test)@host"}}
}

// vault writes an archive for opts into the env's directory and vaults it.
func (e *env) vault(t testing.TB, opts samplearchive.Options) (path string, m *manifest.Manifest) {
	t.Helper()
	adir := filepath.Join(e.dir, "archives", filepath.Base(t.TempDir()))
	if err := os.MkdirAll(adir, 0o700); err != nil {
		t.Fatal(err)
	}
	p, err := samplearchive.WriteDir(adir, opts)
	if err != nil {
		t.Fatal(err)
	}
	m, _, err = testvault.Put(context.Background(), e.st, e.keys, p, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	return p, m
}

// records returns the env's audit records with the given action.
func (e *env) records(t testing.TB, action string) []audit.Record {
	t.Helper()
	page, err := e.log.Query(context.Background(), audit.Filter{Action: action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return page.Records
}

// noDebris fails if dir holds anything but the names in keep.
func noDebris(t testing.TB, dir string, keep ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ok := map[string]bool{}
	for _, k := range keep {
		ok[k] = true
	}
	for _, e := range ents {
		if !ok[e.Name()] {
			t.Errorf("%s holds %s after a refused fetch", dir, e.Name())
		}
	}
}

func checkName(err error) string {
	var ce *CheckError
	if errors.As(err, &ce) {
		return ce.Check
	}
	return ""
}
