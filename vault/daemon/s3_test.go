package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
)

// s3Env is an env whose store is a prefix of srv's shared bucket, over TLS.
func s3Env(t testing.TB, srv *testservers.Server, prefix string, o envOpt) *env {
	t.Helper()
	return s3EnvBucket(t, srv, srv.Bucket, prefix, o)
}

// s3EnvBucket is an env whose store is a prefix of bucket on srv, over TLS.
func s3EnvBucket(t testing.TB, srv *testservers.Server, bucket, prefix string, o envOpt) *env {
	t.Helper()
	dir := t.TempDir()
	ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	must(t, os.WriteFile(ak, []byte(srv.AccessKey+"\n"), 0o600))
	must(t, os.WriteFile(sk, []byte(srv.SecretKey+"\n"), 0o600))
	o.storeYAML = fmt.Sprintf("store:\n  url: %s\n  caFile: %s\n  pathStyle: path\n  accessKeyFile: %s\n  secretKeyFile: %s\n%s",
		srv.StoreURL(bucket, prefix), srv.CAFile, ak, sk, o.storeExtra)
	return newEnv(t, o)
}

// TestStoreOutage stops MinIO during a burst: nothing is lost or shredded
// early, the backlog shows, and everything is vaulted once it returns.
func TestStoreOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own MinIO")
	}
	srv := testservers.New(t, testservers.MinIO)
	e := s3Env(t, srv, "outage", envOpt{})
	r := startDaemon(t, e, Options{MinBackoff: 200 * time.Millisecond, MaxBackoff: 2 * time.Second})
	st := openStore(t, e)

	plains := map[string][]byte{}
	drop := func(i int) {
		o := samplearchive.Options{Engine: samplearchive.Engine(i % 2), Namespace: "burst", Pod: fmt.Sprintf("p-%d", i), Seed: int64(i), MemoryBytes: 1 << 20}
		b := archiveBytes(t, o)
		name := samplearchive.Filename(o)
		plains[name] = b
		must(t, os.WriteFile(filepath.Join(e.ckDir, name), b, 0o600))
	}
	for i := range 4 {
		drop(i)
	}
	time.Sleep(100 * time.Millisecond)
	srv.Stop()
	for i := 4; i < 12; i++ {
		drop(i)
	}
	time.Sleep(4 * time.Second)
	status, err := r.d.Status()
	must(t, err)
	left := listTars(t, e.ckDir)
	t.Logf("during the outage: %d pending, oldest %s, %d archives still local", status.Pending, status.OldestAge, len(left))
	if len(left) < 8 {
		t.Fatalf("only %d archives left local during the outage; some were destroyed without the store", len(left))
	}
	if status.Pending == 0 {
		t.Errorf("backlog not reported during the outage")
	}
	must(t, srv.Start())
	for name, plain := range plains {
		p := waitVaulted(t, r, name, 60*time.Second)
		checkVaulted(t, e, st, p, plain)
	}
	must(t, r.stop())
	recs := trail(t, e)
	checkOrder(t, recs)
	failed := 0
	for _, rec := range recs {
		if rec.Action == "failed" {
			failed++
		}
	}
	t.Logf("%d failed records for %d archives during the outage", failed, len(plains))
}
