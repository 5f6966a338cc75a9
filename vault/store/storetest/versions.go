package storetest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// VersionStore is a store with the version operations retention needs
// (vault/gc declares the same interface; it is repeated here so the suite
// does not depend on its consumer).
type VersionStore interface {
	store.Store
	ListVersions(ctx context.Context, prefix string, fn func(store.Version) error) error
	VersionLock(ctx context.Context, key, versionID string) (store.Lock, error)
	DeleteVersion(ctx context.Context, key, versionID string, opts store.DeleteOptions) error
}

// RunVersions is the conformance suite of the version operations. Every
// store that retention runs on passes it; caps.Versioned selects the
// expectations about delete markers and multiple versions.
func RunVersions(t *testing.T, newStore func(t *testing.T) VersionStore, caps Caps) {
	t.Run("ListVersions", func(t *testing.T) { testListVersions(t, newStore(t), caps) })
	t.Run("DeleteMarkerIsNotDeletion", func(t *testing.T) { testDeleteMarker(t, newStore(t), caps) })
	t.Run("DeleteVersionLocks", func(t *testing.T) { testDeleteVersionLocks(t, newStore(t)) })
	t.Run("DeleteVersionMissing", func(t *testing.T) { testDeleteVersionMissing(t, newStore(t)) })
}

func versions(t *testing.T, s VersionStore, prefix string) []store.Version {
	t.Helper()
	var out []store.Version
	if err := s.ListVersions(context.Background(), prefix, func(v store.Version) error {
		out = append(out, v)
		return nil
	}); err != nil {
		t.Fatalf("ListVersions(%q): %v", prefix, err)
	}
	return out
}

func testListVersions(t *testing.T, s VersionStore, caps Caps) {
	ctx := context.Background()
	for i, k := range []string{"v/b", "v/a-c", "v/a/x", "w/other"} {
		put(t, s, k, Data(uint64(300+i), int64(10+i)), store.PutOptions{})
	}
	second := put(t, s, "v/b", Data(400, 7), store.PutOptions{}) // a second version
	got := versions(t, s, "v/")
	var keys []string
	for _, v := range got {
		keys = append(keys, v.Key)
		if v.DeleteMarker || v.LastModified.IsZero() {
			t.Errorf("version %+v: unexpected delete marker or zero time", v)
		}
	}
	want := "v/a-c v/a/x v/b"
	if caps.Versioned {
		want = "v/a-c v/a/x v/b v/b"
	}
	if strings.Join(keys, " ") != want {
		t.Fatalf("ListVersions(v/) keys = %q, want %q", keys, want)
	}
	last := got[len(got)-1]
	if caps.Versioned {
		// Newest first within a key.
		first := got[len(got)-2]
		if first.VersionID != second.VersionID || !first.IsLatest || first.Size != 7 {
			t.Errorf("first version of v/b = %+v, want the latest (%q, 7 bytes)", first, second.VersionID)
		}
		if last.IsLatest || last.Size != 10 {
			t.Errorf("second version of v/b = %+v, want the older 10-byte one, not latest", last)
		}
	} else if !last.IsLatest || last.Size != 7 || last.VersionID != "" {
		t.Errorf("only version of v/b = %+v, want latest, 7 bytes, id \"\"", last)
	}
	stop := errors.New("stop")
	n := 0
	err := s.ListVersions(ctx, "v/", func(store.Version) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("ListVersions with a failing callback = %v after %d calls, want the callback's error after 1", err, n)
	}
	if _, err := s.VersionLock(ctx, "v/b", second.VersionID); err != nil {
		t.Errorf("VersionLock(unlocked) = %v", err)
	}
}

func testDeleteMarker(t *testing.T, s VersionStore, caps Caps) {
	ctx := context.Background()
	put(t, s, "m/k", []byte("bytes that must really go"), store.PutOptions{})
	if err := s.Delete(ctx, "m/k", ""); err != nil {
		t.Fatal(err)
	}
	vs := versions(t, s, "m/")
	if !caps.Versioned {
		if len(vs) != 0 {
			t.Fatalf("after Delete on an unversioned store, versions = %+v", vs)
		}
		return
	}
	// A plain delete only hides the bytes behind a marker.
	if len(vs) != 2 || !vs[0].DeleteMarker || !vs[0].IsLatest || vs[1].DeleteMarker {
		t.Fatalf("after a plain Delete, versions = %+v; want a latest delete marker over the data version", vs)
	}
	for _, v := range vs {
		if err := s.DeleteVersion(ctx, v.Key, v.VersionID, store.DeleteOptions{}); err != nil {
			t.Fatalf("DeleteVersion(%+v): %v", v, err)
		}
	}
	if vs := versions(t, s, "m/"); len(vs) != 0 {
		t.Errorf("after deleting every version, versions = %+v", vs)
	}
}

// versionOf returns the id of key's only (latest) version.
func versionOf(t *testing.T, s VersionStore, key string) string {
	t.Helper()
	for _, v := range versions(t, s, key) {
		if v.Key == key && v.IsLatest {
			return v.VersionID
		}
	}
	t.Fatalf("no latest version of %q", key)
	return ""
}

func testDeleteVersionLocks(t *testing.T, s VersionStore) {
	ctx := context.Background()
	until := time.Now().Add(4 * time.Second).Truncate(time.Second).Add(time.Second)
	put(t, s, "l/compliance", []byte("c"), store.PutOptions{Retention: store.Retention{Mode: "compliance", Until: until}})
	put(t, s, "l/governance", []byte("g"), store.PutOptions{Retention: store.Retention{Mode: "governance", Until: until}})
	put(t, s, "l/held", []byte("h"), store.PutOptions{Retention: store.Retention{LegalHold: true}})
	vc, vg, vh := versionOf(t, s, "l/compliance"), versionOf(t, s, "l/governance"), versionOf(t, s, "l/held")

	lk, err := s.VersionLock(ctx, "l/compliance", vc)
	if err != nil || lk.Mode != "compliance" || !lk.Until.Equal(until) || lk.LegalHold || !lk.Retained(time.Now()) {
		t.Errorf("VersionLock(compliance) = %+v, %v; want compliance until %v", lk, err, until)
	}
	lk, err = s.VersionLock(ctx, "l/governance", vg)
	if err != nil || lk.Mode != "governance" || !lk.Until.Equal(until) {
		t.Errorf("VersionLock(governance) = %+v, %v", lk, err)
	}
	lk, err = s.VersionLock(ctx, "l/held", vh)
	if err != nil || !lk.LegalHold || lk.Mode != "" {
		t.Errorf("VersionLock(held) = %+v, %v; want a legal hold and no retention", lk, err)
	}

	bypass := store.DeleteOptions{BypassGovernance: true}
	if err := s.DeleteVersion(ctx, "l/compliance", vc, bypass); !errors.Is(err, store.ErrLocked) {
		t.Errorf("DeleteVersion(compliance, bypass) = %v, want ErrLocked: compliance is never bypassed", err)
	}
	if err := s.DeleteVersion(ctx, "l/governance", vg, store.DeleteOptions{}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("DeleteVersion(governance) without bypass = %v, want ErrLocked", err)
	}
	if err := s.DeleteVersion(ctx, "l/held", vh, bypass); !errors.Is(err, store.ErrLocked) {
		t.Errorf("DeleteVersion(legal hold, bypass) = %v, want ErrLocked", err)
	}
	if err := s.DeleteVersion(ctx, "l/governance", vg, bypass); err != nil {
		t.Errorf("DeleteVersion(governance, bypass) = %v", err)
	}
	if err := s.SetLegalHold(ctx, "l/held", false); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVersion(ctx, "l/held", vh, store.DeleteOptions{}); err != nil {
		t.Errorf("DeleteVersion after the hold was lifted = %v", err)
	}
	time.Sleep(time.Until(until) + 1500*time.Millisecond)
	if err := s.DeleteVersion(ctx, "l/compliance", vc, store.DeleteOptions{}); err != nil {
		t.Errorf("DeleteVersion after compliance retention ended = %v", err)
	}
	if vs := versions(t, s, "l/"); len(vs) != 0 {
		t.Errorf("versions left = %+v", vs)
	}
}

func testDeleteVersionMissing(t *testing.T, s VersionStore) {
	ctx := context.Background()
	put(t, s, "x/present", []byte("p"), store.PutOptions{})
	v := versionOf(t, s, "x/present")
	if err := s.DeleteVersion(ctx, "x/present", v, store.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVersion(ctx, "x/present", v, store.DeleteOptions{}); err != nil {
		t.Errorf("deleting a deleted version again = %v, want nil (idempotent)", err)
	}
	if _, err := s.VersionLock(ctx, "x/present", v); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("VersionLock(deleted) = %v, want ErrNotExist", err)
	}
	if err := s.DeleteVersion(ctx, "../bad", v, store.DeleteOptions{}); err == nil {
		t.Error("DeleteVersion accepted an invalid key")
	}
}
