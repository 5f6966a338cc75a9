package storeconfig

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  policy.StoreConfig
		want string
	}{
		{policy.StoreConfig{}, "not set"},
		{policy.StoreConfig{URL: "ftp://x/y"}, "unknown scheme"},
		{policy.StoreConfig{URL: "file://relative"}, "file:///"},
		{policy.StoreConfig{URL: "http://127.0.0.1:9/b"}, "plain http is refused"},
		{policy.StoreConfig{URL: "https://127.0.0.1:9/"}, "no bucket"},
		{policy.StoreConfig{URL: "https://user:pw@127.0.0.1:9/b"}, "credentials in the URL"},
		{policy.StoreConfig{URL: "https://h/b", ObjectLock: &policy.ObjectLock{Mode: "forever", Days: 1}}, "compliance or governance"},
		{policy.StoreConfig{URL: "https://h/b", ObjectLock: &policy.ObjectLock{Mode: "compliance"}}, "positive number"},
		{policy.StoreConfig{URL: "https://h/b", AccessKeyFile: "/x"}, "together"},
	} {
		_, err := Open(tc.cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, store.ErrPermanent) {
			t.Errorf("Open(%+v) = %v, want a permanent error containing %q", tc.cfg, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "pw@") {
			t.Errorf("error leaks URL credentials: %v", err)
		}
	}
}

func TestFileStoreWithRetention(t *testing.T) {
	s, err := Open(policy.StoreConfig{URL: "file://" + t.TempDir(), ObjectLock: &policy.ObjectLock{Mode: "Governance", Days: 2}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	oi, err := s.Put(ctx, "a", strings.NewReader("x"), 1, store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(oi.RetainUntil); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("RetainUntil = %v, want about 2 days ahead", oi.RetainUntil)
	}
	if err := s.Delete(ctx, "a", ""); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Delete = %v, want ErrLocked", err)
	}
}

// TestOpenTuned: the tuning reaches s3store (which refuses parts below S3's
// 5 MiB minimum) and a valid one opens.
func TestOpenTuned(t *testing.T) {
	cfg := policy.StoreConfig{URL: "https://127.0.0.1:9/bucket"}
	if _, err := OpenTuned(cfg, nil, Tuning{PartSize: 1 << 20}); err == nil || !strings.Contains(err.Error(), "5 MiB") {
		t.Fatalf("1 MiB parts: got %v, want the 5 MiB minimum named", err)
	}
	if _, err := OpenTuned(cfg, nil, Tuning{PartSize: 8 << 20, Concurrency: 2}); err != nil {
		t.Fatal(err)
	}
}
