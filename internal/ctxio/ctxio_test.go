package ctxio

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// TestReaderStopsWhenCancelled: a copy in progress ends with the context's
// error at the next Read, having passed on only what was read before.
func TestReaderStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	src := bytes.NewReader(make([]byte, 1<<20))
	r := Reader(ctx, src)
	buf := make([]byte, 4096)
	if n, err := r.Read(buf); n != len(buf) || err != nil {
		t.Fatalf("Read before cancel = %d, %v", n, err)
	}
	cancel()
	n, err := io.Copy(io.Discard, r)
	if n != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("copy after cancel = %d bytes, %v; want 0, context.Canceled", n, err)
	}
	if rest := src.Len(); rest != 1<<20-len(buf) {
		t.Errorf("the source was read on after cancel: %d bytes left, want %d", rest, 1<<20-len(buf))
	}
}

// TestReaderPassesThrough: until the context ends, it is the reader it wraps.
func TestReaderPassesThrough(t *testing.T) {
	want := bytes.Repeat([]byte("checkpoint"), 10000)
	var got bytes.Buffer
	if _, err := io.Copy(&got, Reader(context.Background(), bytes.NewReader(want))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Error("bytes differ")
	}
}
