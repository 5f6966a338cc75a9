package s3store

import (
	"os"
	"testing"

	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testservers.Main(m)) }

// newFor returns a store on srv's Object-Lock bucket under a fresh prefix.
func newFor(t testing.TB, srv *testservers.Server, mod func(*Config)) *Store {
	t.Helper()
	cfg := Config{
		URL:               srv.StoreURL(srv.Bucket, storetest.RandomPrefix()),
		CAFile:            srv.CAFile,
		Credentials:       credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		PathStyle:         "path",
		RequireObjectLock: true,
		BaseDelay:         10e6,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testservers.Shared(t, kind)
			storetest.Run(t, func(t *testing.T) store.Store {
				return newFor(t, srv, nil)
			}, storetest.Caps{Versioned: true, ObjectLock: true, LargeSize: 40<<20 + 5})
		})
	}
}

// TestConformanceSinglePUT runs the suite with large objects sent as one
// streaming PUT instead of multipart.
func TestConformanceSinglePUT(t *testing.T) {
	if testing.Short() {
		t.Skip("the multipart suite covers the short run")
	}
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testservers.Shared(t, kind)
			storetest.Run(t, func(t *testing.T) store.Store {
				return newFor(t, srv, func(c *Config) { c.MultipartThreshold = 64 << 20 })
			}, storetest.Caps{Versioned: true, ObjectLock: true, LargeSize: 40<<20 + 5})
		})
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVersionConformance(t *testing.T) {
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testservers.Shared(t, kind)
			storetest.RunVersions(t, func(t *testing.T) storetest.VersionStore {
				return newFor(t, srv, nil)
			}, storetest.Caps{Versioned: true, ObjectLock: true})
		})
	}
}
