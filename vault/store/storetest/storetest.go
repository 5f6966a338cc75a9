// Package storetest is the one conformance suite every store.Store
// implementation passes. It checks the contract written in package store's
// doc comments: whole-or-nothing Puts with a verified full-object checksum,
// exact sizes, streaming and random-access reads, lexical paginated
// listing, idempotent deletes, key validation, and retention / legal hold.
//
// An implementation's test calls Run with a function that returns a fresh,
// empty store for each sub-test (for a shared S3 server: the same bucket
// under a new random prefix).
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/crc64nvme"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Caps says which optional parts of the contract the store under test has.
type Caps struct {
	// Versioned stores return a VersionID from Put and accept it in Delete.
	Versioned bool
	// ObjectLock stores enforce retention and legal hold (the file store,
	// and S3 buckets created with Object Lock).
	ObjectLock bool
	// LargeSize, if non-zero, is the size of one object the suite uploads
	// to exercise the implementation's multipart path (skipped with
	// -short).
	LargeSize int64
}

// Run runs the conformance suite. newStore must return an empty store each
// time it is called; it may register cleanup with t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) store.Store, caps Caps) {
	t.Run("PutStatOpen", func(t *testing.T) { testPutStatOpen(t, newStore(t), caps) })
	t.Run("ReadAtSeek", func(t *testing.T) { testReadAtSeek(t, newStore(t)) })
	t.Run("WrongSize", func(t *testing.T) { testWrongSize(t, newStore(t)) })
	t.Run("Cancelled", func(t *testing.T) { testCancelled(t, newStore(t)) })
	t.Run("Overwrite", func(t *testing.T) { testOverwrite(t, newStore(t), caps) })
	t.Run("IfAbsent", func(t *testing.T) { testIfAbsent(t, newStore(t), caps) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, newStore(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, newStore(t)) })
	t.Run("List", func(t *testing.T) { testList(t, newStore(t)) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, newStore(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newStore(t)) })
	t.Run("Describe", func(t *testing.T) { testDescribe(t, newStore(t)) })
	if caps.ObjectLock {
		t.Run("Retention", func(t *testing.T) { testRetention(t, newStore(t)) })
		t.Run("LegalHold", func(t *testing.T) { testLegalHold(t, newStore(t)) })
	} else {
		t.Run("NoLock", func(t *testing.T) { testNoLock(t, newStore(t)) })
	}
}

// Data returns n pseudo-random bytes (deterministic per seed), so failures
// are reproducible while contents differ between objects.
func Data(seed uint64, n int64) []byte {
	b := make([]byte, n)
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// CRC64NVME returns the store.Checksum of b, computed independently of any
// implementation.
func CRC64NVME(b []byte) store.Checksum {
	h := crc64nvme.New()
	h.Write(b)
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], h.Sum64())
	return store.Checksum{Algorithm: store.ChecksumCRC64NVME, Value: base64.StdEncoding.EncodeToString(s[:])}
}

func put(t *testing.T, s store.Store, key string, data []byte, opts store.PutOptions) store.ObjectInfo {
	t.Helper()
	oi, err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
	return oi
}

func readAll(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	o, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return b
}

func testPutStatOpen(t *testing.T, s store.Store, caps Caps) {
	sizes := []int64{0, 1, 64<<10 + 7, 5<<20 + 1}
	if caps.LargeSize > 0 && !testing.Short() {
		sizes = append(sizes, caps.LargeSize)
	}
	for i, size := range sizes {
		key := fmt.Sprintf("ns/pod/ctr/obj-%d.tar.age", size)
		data := Data(uint64(i)+1, size)
		want := CRC64NVME(data)
		oi := put(t, s, key, data, store.PutOptions{ContentType: "application/octet-stream"})
		if oi.Key != key || oi.Size != size {
			t.Errorf("Put(%q) info = key %q size %d, want size %d", key, oi.Key, oi.Size, size)
		}
		if oi.Checksum != want {
			t.Errorf("Put(%q) checksum = %+v, want %+v", key, oi.Checksum, want)
		}
		st, err := s.Stat(context.Background(), key)
		if err != nil {
			t.Fatalf("Stat(%q): %v", key, err)
		}
		if st.Key != key || st.Size != size || st.LastModified.IsZero() {
			t.Errorf("Stat(%q) = %+v", key, st)
		}
		if st.Checksum.Value != "" && st.Checksum != want {
			t.Errorf("Stat(%q) checksum = %+v, want %+v", key, st.Checksum, want)
		}
		if got := readAll(t, s, key); !bytes.Equal(got, data) {
			t.Errorf("Open(%q) read %d bytes, differing from the %d put", key, len(got), len(data))
		}
	}
}

func testReadAtSeek(t *testing.T, s store.Store) {
	data := Data(7, 300<<10)
	put(t, s, "r/obj", data, store.PutOptions{})
	o, err := s.Open(context.Background(), "r/obj")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Info().Size != int64(len(data)) {
		t.Errorf("Info().Size = %d, want %d", o.Info().Size, len(data))
	}
	buf := make([]byte, 1000)
	for _, off := range []int64{0, 12345, int64(len(data)) - 1000} {
		n, err := o.ReadAt(buf, off)
		if n != len(buf) || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
		if !bytes.Equal(buf, data[off:off+1000]) {
			t.Errorf("ReadAt(%d) returned wrong bytes", off)
		}
	}
	if n, err := o.ReadAt(buf, int64(len(data))-10); n != 10 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v; want 10, EOF", n, err)
	}
	if pos, err := o.Seek(200<<10, io.SeekStart); err != nil || pos != 200<<10 {
		t.Fatalf("Seek = %d, %v", pos, err)
	}
	rest, err := io.ReadAll(o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, data[200<<10:]) {
		t.Errorf("read after Seek returned wrong bytes (%d)", len(rest))
	}
}

func testWrongSize(t *testing.T, s store.Store) {
	ctx := context.Background()
	data := Data(3, 100<<10)
	if _, err := s.Put(ctx, "short", bytes.NewReader(data[:len(data)-1]), int64(len(data)), store.PutOptions{}); err == nil {
		t.Error("Put with a reader one byte short succeeded")
	}
	if _, err := s.Put(ctx, "long", bytes.NewReader(data), int64(len(data)-1), store.PutOptions{}); err == nil {
		t.Error("Put with a reader one byte long succeeded")
	}
	for _, k := range []string{"short", "long"} {
		if _, err := s.Stat(ctx, k); !errors.Is(err, store.ErrNotExist) {
			t.Errorf("after a failed Put, Stat(%q) = %v, want ErrNotExist", k, err)
		}
	}
	if _, err := s.Put(ctx, "neg", bytes.NewReader(nil), -1, store.PutOptions{}); err == nil {
		t.Error("Put with size -1 succeeded; the contract needs the exact size")
	}
}

// failingReader yields n bytes then fails, like a disk error mid-upload.
type failingReader struct {
	r io.Reader
	n int64
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("injected read failure")
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= int64(n)
	return n, err
}

func testCancelled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := Data(4, 10<<10)
	if _, err := s.Put(ctx, "cancelled", bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err == nil {
		t.Error("Put with a cancelled context succeeded")
	}
	fr := &failingReader{r: bytes.NewReader(data), n: 5000}
	if _, err := s.Put(context.Background(), "failed", fr, int64(len(data)), store.PutOptions{}); err == nil {
		t.Error("Put whose reader failed succeeded")
	}
	for _, k := range []string{"cancelled", "failed"} {
		if _, err := s.Stat(context.Background(), k); !errors.Is(err, store.ErrNotExist) {
			t.Errorf("Stat(%q) after a failed Put = %v, want ErrNotExist", k, err)
		}
	}
}

func testOverwrite(t *testing.T, s store.Store, caps Caps) {
	a, b := Data(5, 4096), Data(6, 5000)
	oi1 := put(t, s, "k", a, store.PutOptions{})
	oi2 := put(t, s, "k", a, store.PutOptions{}) // idempotent
	if oi2.Checksum != oi1.Checksum || oi2.Size != oi1.Size {
		t.Errorf("second identical Put = %+v, first %+v", oi2, oi1)
	}
	put(t, s, "k", b, store.PutOptions{})
	if got := readAll(t, s, "k"); !bytes.Equal(got, b) {
		t.Error("overwrite did not replace the content")
	}
	if caps.Versioned {
		if oi1.VersionID == "" || oi1.VersionID == oi2.VersionID {
			t.Errorf("versioned store: version ids %q and %q", oi1.VersionID, oi2.VersionID)
		}
		if err := s.Delete(context.Background(), "k", oi1.VersionID); err != nil {
			t.Errorf("Delete of an old version: %v", err)
		}
		if got := readAll(t, s, "k"); !bytes.Equal(got, b) {
			t.Error("deleting an old version changed the current one")
		}
	}
}

// testIfAbsent: a create-only Put never replaces an existing object, locked
// or not, and creates a missing one.
func testIfAbsent(t *testing.T, s store.Store, caps Caps) {
	ctx := context.Background()
	a, b := Data(7, 3000), Data(8, 3000)
	create := store.PutOptions{IfAbsent: true}
	put(t, s, "new", a, create)
	if got := readAll(t, s, "new"); !bytes.Equal(got, a) {
		t.Fatal("create-only Put of a new key did not store it")
	}
	_, err := s.Put(ctx, "new", bytes.NewReader(b), int64(len(b)), create)
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("create-only Put over an existing object: err = %v, want ErrExists", err)
	}
	if got := readAll(t, s, "new"); !bytes.Equal(got, a) {
		t.Fatal("create-only Put replaced an existing object")
	}
	if caps.ObjectLock {
		lock := store.PutOptions{IfAbsent: true, Retention: store.Retention{Mode: "compliance", Until: lockUntil()}}
		put(t, s, "locked", a, lock)
		_, err := s.Put(ctx, "locked", bytes.NewReader(b), int64(len(b)), lock)
		if !errors.Is(err, store.ErrExists) {
			t.Fatalf("create-only Put over a locked object: err = %v, want ErrExists", err)
		}
	}
	// Not asserted: re-creating a key whose object was deleted. S3 allows
	// it (a delete marker is not an object), versitygw v1.8 answers 412;
	// the daemon never re-creates a key, since every attempt takes a new one.
}

func testMissing(t *testing.T, s store.Store) {
	ctx := context.Background()
	if _, err := s.Stat(ctx, "no/such"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat(missing) = %v, want ErrNotExist", err)
	}
	if _, err := s.Open(ctx, "no/such"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Open(missing) = %v, want ErrNotExist", err)
	}
	if err := s.Delete(ctx, "no/such", ""); err != nil {
		t.Errorf("Delete(missing) = %v, want nil (idempotent)", err)
	}
	if err := s.SetLegalHold(ctx, "no/such", true); err == nil {
		t.Error("SetLegalHold(missing) succeeded")
	}
	// A key that is a "directory" of other keys is not itself an object.
	put(t, s, "dir/obj", []byte("x"), store.PutOptions{})
	if _, err := s.Stat(ctx, "dir"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat(prefix of a key) = %v, want ErrNotExist", err)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := context.Background()
	put(t, s, "d/x", []byte("hello"), store.PutOptions{})
	if err := s.Delete(ctx, "d/x", ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Stat(ctx, "d/x"); !errors.Is(err, store.ErrNotExist) {
		t.Errorf("Stat after Delete = %v, want ErrNotExist", err)
	}
	if err := s.Delete(ctx, "d/x", ""); err != nil {
		t.Errorf("second Delete = %v, want nil", err)
	}
	if objs, _, err := s.List(ctx, "d/", "", 0); err != nil || len(objs) != 0 {
		t.Errorf("List after Delete = %v, %v", objs, err)
	}
}

func testList(t *testing.T, s store.Store) {
	ctx := context.Background()
	// '-' (0x2d) sorts before '/' (0x2f): a directory walk would get these
	// wrong.
	keys := []string{"a/b", "a-c", "a/c/d", "a.x", "b", "a0", "ab/c"}
	for i, k := range keys {
		put(t, s, k, Data(uint64(100+i), int64(i+1)), store.PutOptions{})
	}
	want := append([]string(nil), keys...)
	sortStrings(want)

	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > len(keys) {
			t.Fatal("List does not terminate")
		}
		objs, next, err := s.List(ctx, "", after, 2)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(objs) > 2 {
			t.Fatalf("List(limit 2) returned %d", len(objs))
		}
		for _, o := range objs {
			got = append(got, o.Key)
			if o.Size <= 0 {
				t.Errorf("List: %q has size %d", o.Key, o.Size)
			}
		}
		if next == "" {
			break
		}
		after = next
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("paginated List = %q, want %q", got, want)
	}

	objs, next, err := s.List(ctx, "a/", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var sub []string
	for _, o := range objs {
		sub = append(sub, o.Key)
	}
	if strings.Join(sub, " ") != "a/b a/c/d" || next != "" {
		t.Errorf(`List("a/") = %q next %q, want [a/b a/c/d]`, sub, next)
	}
	objs, _, err = s.List(ctx, "a", "a/b", 0)
	if err != nil {
		t.Fatal(err)
	}
	sub = sub[:0]
	for _, o := range objs {
		sub = append(sub, o.Key)
	}
	if strings.Join(sub, " ") != "a/c/d a0 ab/c" {
		t.Errorf(`List("a", after "a/b") = %q, want [a/c/d a0 ab/c]`, sub)
	}
	if objs, _, err := s.List(ctx, "nothing/", "", 0); err != nil || len(objs) != 0 {
		t.Errorf("List(empty prefix dir) = %v, %v", objs, err)
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func testInvalidKeys(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, k := range []string{"", "../escape", "a/../../escape", "/abs", "a\\b", "a\x00b", "a//b", "./a"} {
		if _, err := s.Put(ctx, k, strings.NewReader("x"), 1, store.PutOptions{}); err == nil {
			t.Errorf("Put(%q) accepted an invalid key", k)
		}
		if _, err := s.Stat(ctx, k); err == nil || errors.Is(err, store.ErrNotExist) {
			t.Errorf("Stat(%q) = %v, want an invalid-key error", k, err)
		}
		if err := s.Delete(ctx, k, ""); err == nil {
			t.Errorf("Delete(%q) accepted an invalid key", k)
		}
	}
	if _, _, err := s.List(ctx, "../", "", 0); err == nil {
		t.Error(`List("../") accepted an invalid prefix`)
	}
}

func testConcurrent(t *testing.T, s store.Store) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := Data(uint64(200+i), int64(1000*(i+1)))
			key := fmt.Sprintf("c/%d", i)
			if _, err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), store.PutOptions{}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	objs, _, err := s.List(context.Background(), "c/", "", 0)
	if err != nil || len(objs) != 8 {
		t.Errorf("List after 8 concurrent Puts = %d objects, %v", len(objs), err)
	}
}

func testDescribe(t *testing.T, s store.Store) {
	d := s.Describe()
	if d == "" {
		t.Error("Describe is empty")
	}
	for _, bad := range []string{"secret", "password"} {
		if strings.Contains(strings.ToLower(d), bad) {
			t.Errorf("Describe() = %q mentions %q", d, bad)
		}
	}
}

// lockUntil is far enough ahead that the lock holds for the whole test,
// short enough that a leftover object on a long-lived server expires soon.
func lockUntil() time.Time { return time.Now().Add(10 * time.Minute).Truncate(time.Second) }

func testRetention(t *testing.T, s store.Store) {
	ctx := context.Background()
	data := Data(9, 2048)
	until := lockUntil()
	oi := put(t, s, "locked", data, store.PutOptions{Retention: store.Retention{Mode: "governance", Until: until}})
	st, err := s.Stat(ctx, "locked")
	if err != nil {
		t.Fatal(err)
	}
	if !st.RetainUntil.Equal(until) {
		t.Errorf("Stat RetainUntil = %v, want %v", st.RetainUntil, until)
	}
	if err := s.Delete(ctx, "locked", ""); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Delete(locked) = %v, want ErrLocked", err)
	}
	if oi.VersionID != "" {
		if err := s.Delete(ctx, "locked", oi.VersionID); !errors.Is(err, store.ErrLocked) {
			t.Errorf("Delete(locked, version) = %v, want ErrLocked", err)
		}
	}
	if _, err := s.Put(ctx, "locked", bytes.NewReader(Data(10, 10)), 10, store.PutOptions{}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("overwriting a locked object = %v, want ErrLocked", err)
	}
	if got := readAll(t, s, "locked"); !bytes.Equal(got, data) {
		t.Error("locked object's content changed")
	}
	if _, err := s.Put(ctx, "bad-mode", bytes.NewReader(data), int64(len(data)),
		store.PutOptions{Retention: store.Retention{Mode: "forever", Until: until}}); err == nil {
		t.Error("Put with an unknown retention mode succeeded")
	}

	// An expired retention no longer protects the object.
	expired := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	put(t, s, "expiring", data, store.PutOptions{Retention: store.Retention{Mode: "governance", Until: expired}})
	time.Sleep(time.Until(expired) + time.Second)
	if err := s.Delete(ctx, "expiring", ""); err != nil {
		t.Errorf("Delete after retention expired = %v", err)
	}
}

func testLegalHold(t *testing.T, s store.Store) {
	ctx := context.Background()
	put(t, s, "held", []byte("evidence"), store.PutOptions{})
	if err := s.SetLegalHold(ctx, "held", true); err != nil {
		t.Fatalf("SetLegalHold(on): %v", err)
	}
	if st, err := s.Stat(ctx, "held"); err != nil || !st.LegalHold {
		t.Errorf("Stat after legal hold = %+v, %v", st, err)
	}
	if err := s.Delete(ctx, "held", ""); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Delete(held) = %v, want ErrLocked", err)
	}
	if err := s.SetLegalHold(ctx, "held", false); err != nil {
		t.Fatalf("SetLegalHold(off): %v", err)
	}
	if err := s.Delete(ctx, "held", ""); err != nil {
		t.Errorf("Delete after lifting the hold = %v", err)
	}
	put(t, s, "born-held", []byte("x"), store.PutOptions{Retention: store.Retention{LegalHold: true}})
	if err := s.Delete(ctx, "born-held", ""); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Delete(put with legal hold) = %v, want ErrLocked", err)
	}
	if err := s.SetLegalHold(ctx, "born-held", false); err != nil {
		t.Fatal(err)
	}
}

func testNoLock(t *testing.T, s store.Store) {
	put(t, s, "x", []byte("x"), store.PutOptions{})
	if err := s.SetLegalHold(context.Background(), "x", true); !errors.Is(err, store.ErrUnsupported) {
		t.Errorf("SetLegalHold on a store without Object Lock = %v, want ErrUnsupported", err)
	}
}

// RandomPrefix returns a fresh "t-<hex>/" prefix for one test's objects on a
// shared server.
func RandomPrefix() string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("t-%x/", b)
}
