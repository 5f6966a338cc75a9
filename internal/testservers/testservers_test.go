package testservers

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestServers starts each kind, checks the bucket has Object Lock, writes
// an object, restarts the server and reads the object back.
func TestServers(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := New(t, kind)
			c := srv.Client(t)
			ctx := context.Background()
			enabled, _, _, _, err := c.GetObjectLockConfig(ctx, srv.Bucket)
			if err != nil {
				t.Fatalf("object lock config of %s: %v", srv.Bucket, err)
			}
			if enabled != "Enabled" {
				t.Errorf("object lock = %q, want Enabled", enabled)
			}
			v, err := c.GetBucketVersioning(ctx, srv.Bucket)
			if err != nil || !v.Enabled() {
				t.Fatalf("versioning of %s: %+v, %v", srv.Bucket, v, err)
			}
			if _, err := c.PutObject(ctx, srv.Bucket, "x", bytes.NewReader([]byte("hello")), 5, minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			srv.Stop()
			if srv.Running() {
				t.Fatal("still running after Stop")
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			st, err := c.StatObject(ctx, srv.Bucket, "x", minio.StatObjectOptions{})
			if err != nil || st.Size != 5 {
				t.Fatalf("after restart: %+v, %v", st, err)
			}
		})
	}
}

// TestMinIOStartsWithIAMLoaded holds Start to its promise that MinIO has
// finished its first IAM load: a policy added before that load ends is
// forgotten (see ready). MinIO's own count of IAM loads must be at least
// one the moment Start returns; MinIO leaves the count out of its metrics
// until its IAM store exists, which is earlier still. Without the wait the
// count was missing or zero in about one start in six, so the server is
// started five times.
func TestMinIOStartsWithIAMLoaded(t *testing.T) {
	srv := newWithEnv(t, MinIO, "MINIO_PROMETHEUS_AUTH_TYPE=public")
	for start := 1; ; start++ {
		resp, err := srv.HTTPClient().Get(srv.Endpoint + "/minio/metrics/v3/cluster/iam")
		if err != nil {
			t.Fatal(err)
		}
		loads := "missing"
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "minio_cluster_iam_sync_successes "); ok {
				loads = v
			}
		}
		resp.Body.Close()
		if n, err := strconv.ParseFloat(loads, 64); err != nil || n < 1 {
			t.Errorf("start %d: minio_cluster_iam_sync_successes is %s (HTTP %d, %v): Start returned before MinIO loaded its IAM state",
				start, loads, resp.StatusCode, sc.Err())
		}
		if start == 5 {
			return
		}
		srv.Stop()
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
	}
}
