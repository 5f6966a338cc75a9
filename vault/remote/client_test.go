package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestReadsAnswersToTheirEnd: having every byte of an object, the client
// still reads the answer's end before it hangs up (the client speaks
// HTTP/1.1; over HTTP/2, END_STREAM), so the service sees a download
// finish rather than a reset stream or a closed connection. The
// server here holds the end back for a moment after the last byte, as the
// service does while it makes its outcome record durable, and notes
// whether the client reset the stream meanwhile. (TestClientEndsStreamsCleanly
// in vault/service shows the outcome records of the real service.)
func TestReadsAnswersToTheirEnd(t *testing.T) {
	obj := make([]byte, 300<<10)
	rand.Read(obj)
	reset := make(chan bool, 10)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Length", strconv.Itoa(len(obj)))
		if r.Header.Get("Range") != "" {
			h.Set("Content-Range", "bytes 0-"+strconv.Itoa(len(obj)-1)+"/"+strconv.Itoa(len(obj)))
			h.Set("Content-Length", strconv.Itoa(len(obj)))
			w.WriteHeader(http.StatusPartialContent)
		}
		w.Write(obj)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			reset <- true
		case <-time.After(300 * time.Millisecond):
			reset <- false
		}
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	s := clientOf(t, srv, Config{})
	ctx := context.Background()

	o, err := s.Open(ctx, "payments/p/c/x.tar.age")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(o)
	o.Close()
	if err != nil || !bytes.Equal(got, obj) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if <-reset {
		t.Error("Open/Read/Close: the client reset the stream after the last byte instead of reading its end")
	}

	o, err = s.Open(ctx, "payments/p/c/x.tar.age")
	if err != nil {
		t.Fatal(err)
	}
	<-reset // the Open's own answer
	buf := make([]byte, len(obj))
	if n, err := o.(io.ReaderAt).ReadAt(buf, 0); n != len(obj) || err != nil {
		t.Fatalf("ReadAt: %d, %v", n, err)
	}
	o.Close()
	if <-reset {
		t.Error("ReadAt: the client reset the stream after the last byte instead of reading its end")
	}
}

// clientOf is a client of the TLS test server srv, trusting its
// certificate, with token "t" and cfg's other settings.
func clientOf(t *testing.T, srv *httptest.Server, cfg Config) *Store {
	t.Helper()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Server, cfg.CAFile, cfg.Token = srv.URL, ca, "t"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
