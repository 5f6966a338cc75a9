package testservers

import (
	"bytes"
	"context"
	"os"
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
