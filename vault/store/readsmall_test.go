package store

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// oneObject is a Reader holding one object, counting what is read of it.
type oneObject struct {
	data []byte
	read int
}

func (s *oneObject) Stat(context.Context, string) (ObjectInfo, error) { return ObjectInfo{}, nil }
func (s *oneObject) List(context.Context, string, string, int) ([]ObjectInfo, string, error) {
	return nil, "", nil
}
func (s *oneObject) Describe() string { return "one object" }
func (s *oneObject) Open(_ context.Context, key string) (Object, error) {
	if key != "k" {
		return nil, ErrNotExist
	}
	return &countedObject{Reader: bytes.NewReader(s.data), s: s}, nil
}

type countedObject struct {
	*bytes.Reader
	s *oneObject
}

func (o *countedObject) Read(p []byte) (int, error) {
	n, err := o.Reader.Read(p)
	o.s.read += n
	return n, err
}
func (o *countedObject) Close() error     { return nil }
func (o *countedObject) Info() ObjectInfo { return ObjectInfo{} }

// TestReadSmall: an object of max bytes is read whole; one byte more is a
// *TooLargeError naming the key, after reading no more than max+1 bytes
// of an object of any size; a missing object is ErrNotExist.
func TestReadSmall(t *testing.T) {
	ctx := context.Background()
	const max = 1000
	st := &oneObject{data: bytes.Repeat([]byte{7}, max)}
	if b, err := ReadSmall(ctx, st, "k", max); err != nil || len(b) != max {
		t.Fatalf("object of max bytes: %d bytes, %v", len(b), err)
	}
	st = &oneObject{data: make([]byte, 10<<20)}
	_, err := ReadSmall(ctx, st, "k", max)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Key != "k" || tl.Max != max || !strings.Contains(err.Error(), "larger than the 1000 bytes") {
		t.Fatalf("10 MiB object: %v", err)
	}
	if st.read > max+1 {
		t.Errorf("read %d bytes of a too-large object; at most %d", st.read, max+1)
	}
	if _, err := ReadSmall(ctx, st, "missing", max); !errors.Is(err, ErrNotExist) {
		t.Errorf("missing object: %v", err)
	}
}
