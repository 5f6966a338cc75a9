package filestore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

func newStore(t *testing.T) store.Store {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, newStore, storetest.Caps{ObjectLock: true, LargeSize: 17<<20 + 3})
}

func TestModes(t *testing.T) {
	dir := t.TempDir()
	s, err := New(filepath.Join(dir, "vault"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(context.Background(), "ns/pod/obj", strings.NewReader("abc"), 3, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{s.root, s.dataDir(), filepath.Join(s.dataDir(), "ns"), filepath.Join(s.dataDir(), "ns", "pod")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no group/other access", p, st.Mode().Perm())
		}
	}
	for _, p := range []string{s.dataPath("ns/pod/obj"), s.metaPath("ns/pod/obj")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
	}
}

func TestRelativeRootRefused(t *testing.T) {
	if _, err := New("relative/dir"); !errors.Is(err, store.ErrPermanent) {
		t.Errorf("New(relative) = %v, want ErrPermanent", err)
	}
}

// TestSymlinkNotFollowed: a symlink planted in the store is not an object.
func TestSymlinkNotFollowed(t *testing.T) {
	s, _ := New(t.TempDir())
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("s3cr3t"), 0o600)
	if err := os.Symlink(secret, s.dataPath("link")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(context.Background(), "link"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Open(symlink) = %v, want ErrNotExist", err)
	}
	objs, _, _ := s.List(context.Background(), "", "", 0)
	if len(objs) != 0 {
		t.Errorf("List shows %d objects, want the symlink hidden", len(objs))
	}
}

func TestReservedTempPrefix(t *testing.T) {
	s, _ := New(t.TempDir())
	if _, err := s.Put(context.Background(), "a/.ckvault-tmp-x", strings.NewReader("x"), 1, store.PutOptions{}); err == nil {
		t.Error("Put accepted a key in the reserved temp namespace")
	}
}

func TestAbortStaleUploads(t *testing.T) {
	s, _ := New(t.TempDir())
	ctx := context.Background()
	if _, err := s.Put(ctx, "d/keep", strings.NewReader("k"), 1, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.dataDir(), "d", tmpPrefix+"123")
	fresh := filepath.Join(s.dataDir(), "d", tmpPrefix+"456")
	os.WriteFile(stale, []byte("partial"), 0o600)
	os.WriteFile(fresh, []byte("in flight"), 0o600)
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	n, err := s.AbortStaleUploads(ctx, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("AbortStaleUploads = %d, %v; want 1", n, err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Error("stale temp file survived")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("fresh temp file was removed")
	}
	if _, err := s.Stat(ctx, "d/keep"); err != nil {
		t.Errorf("complete object touched: %v", err)
	}
}

// TestNoPartialObject: a Put that fails after writing part of the data
// leaves neither the object nor a temp file visible.
func TestNoPartialObject(t *testing.T) {
	s, _ := New(t.TempDir())
	data := storetest.Data(1, 1<<20)
	_, err := s.Put(context.Background(), "p", bytes.NewReader(data[:1000]), int64(len(data)), store.PutOptions{})
	if err == nil {
		t.Fatal("short Put succeeded")
	}
	entries, _ := os.ReadDir(s.dataDir())
	if len(entries) != 0 {
		t.Errorf("data dir holds %d entries after a failed Put", len(entries))
	}
}

func TestCheck(t *testing.T) {
	s, _ := New(t.TempDir())
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 {
		t.Skip("root can write to a read-only directory")
	}
	os.Chmod(s.dataDir(), 0o500)
	defer os.Chmod(s.dataDir(), 0o700)
	if err := s.Check(context.Background()); !errors.Is(err, store.ErrPermanent) {
		t.Errorf("Check(read-only) = %v, want ErrPermanent", err)
	}
}

func TestVersionConformance(t *testing.T) {
	storetest.RunVersions(t, func(t *testing.T) storetest.VersionStore {
		s, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storetest.Caps{ObjectLock: true})
}
