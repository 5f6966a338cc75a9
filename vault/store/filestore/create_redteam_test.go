package filestore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// TestCreateDoesNotWaitForAnotherUpload: create-only Puts are serialised
// so that two creates of one key cannot both succeed, but only around the
// check and the rename. A slow upload (a multi-GiB ciphertext read from a
// slow disk, or a stalled reader) must not hold every other create-only
// Put — the other worker's archives and every manifest and signature —
// for its whole duration. Before the fix the lock was taken before the
// copy, and the small Put below waited for the stalled one.
func TestCreateDoesNotWaitForAnotherUpload(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pr, pw := io.Pipe()
	slow := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, "ns/pod/ctr/big.tar.age", pr, 1<<20, store.PutOptions{IfAbsent: true})
		slow <- err
	}()
	// The slow upload is under way: part of its body is written.
	if _, err := pw.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	small := make(chan error, 1)
	go func() {
		data := []byte("manifest")
		_, err := s.Put(ctx, "ns/pod/ctr/other.manifest.json", bytes.NewReader(data), int64(len(data)), store.PutOptions{IfAbsent: true})
		small <- err
	}()
	select {
	case err := <-small:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		pw.CloseWithError(errors.New("test over"))
		<-slow
		t.Fatal("a create-only Put of another key waited for a stalled upload (10 s)")
	}
	// The slow one still completes, and a second create of its key fails.
	if _, err := pw.Write(make([]byte, 1<<20-4096)); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "ns/pod/ctr/big.tar.age", bytes.NewReader([]byte("x")), 1, store.PutOptions{IfAbsent: true})
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create of a key: %v, want ErrExists", err)
	}
}

// TestConcurrentCreatesOneWins: many create-only Puts of one key with
// different bytes, at once: exactly one succeeds, the others get
// ErrExists, and the stored object and its checksum are the winner's.
func TestConcurrentCreatesOneWins(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 16
	type res struct {
		i   int
		oi  store.ObjectInfo
		err error
	}
	out := make(chan res, n)
	start := make(chan struct{})
	for i := range n {
		go func() {
			<-start
			data := bytes.Repeat([]byte{byte('a' + i)}, 64<<10)
			oi, err := s.Put(ctx, "k/obj", bytes.NewReader(data), int64(len(data)), store.PutOptions{IfAbsent: true})
			out <- res{i, oi, err}
		}()
	}
	close(start)
	winner := -1
	var wi store.ObjectInfo
	for range n {
		r := <-out
		switch {
		case r.err == nil:
			if winner >= 0 {
				t.Fatalf("two creates of one key succeeded: %d and %d", winner, r.i)
			}
			winner, wi = r.i, r.oi
		case !errors.Is(r.err, store.ErrExists):
			t.Fatalf("create %d: %v", r.i, r.err)
		}
	}
	if winner < 0 {
		t.Fatal("no create succeeded")
	}
	o, err := s.Open(ctx, "k/obj")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	got, err := io.ReadAll(o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{byte('a' + winner)}, 64<<10)) {
		t.Fatalf("stored object is not the winner's (%d)", winner)
	}
	st, err := s.Stat(ctx, "k/obj")
	if err != nil {
		t.Fatal(err)
	}
	if st.Checksum != wi.Checksum {
		t.Fatalf("stored checksum %v is not the winner's %v", st.Checksum, wi.Checksum)
	}
}
