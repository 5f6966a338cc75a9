package remote

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"testing"
	"time"
)

// TestRangeAnswersMustMatch: a malicious service over HTTP/1.1 answers
// each object read with a 206 whose Content-Range does not describe what
// the client asked for or what it sends. The client believes a byte only
// at the offset the answer announced for it: an answer that starts
// elsewhere than asked, or ends before the object does, is refused — the
// bytes are never placed at the wrong offset nor taken beyond the range
// announced. The object is "0123456789"; a correct reader either gets it
// whole or an error.
func TestRangeAnswersMustMatch(t *testing.T) {
	const obj = "0123456789"
	answers := map[string]func(w http.ResponseWriter, r *http.Request){
		// The first read (no Range) is answered with the second half
		// only, announced as such.
		"second-half-first": func(w http.ResponseWriter, r *http.Request) {
			partial(w, 5, 9, obj)
		},
		// A broken first answer; the resumption (Range: bytes=5-)
		// announces bytes 5-7 and sends five bytes, the last two not
		// the object's.
		"range-shorter-than-body": func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Range") == "" {
				brokenAfter(w, obj, 5)
				return
			}
			w.Header().Set("Content-Range", "bytes 5-7/10")
			w.Header().Set("Content-Length", "5")
			w.WriteHeader(http.StatusPartialContent)
			io.WriteString(w, obj[5:8]+"XY")
		},
		// A ranged read (ReadAt) answered 200 with the whole object and
		// a Content-Range naming the range asked for.
		"whole-object-for-a-range": func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Range") != "" {
				w.Header().Set("Content-Range", "bytes 5-9/10")
			}
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, obj)
		},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answers[path.Base(path.Dir(r.URL.Path))](w, r)
	}))
	srv.StartTLS()
	defer srv.Close()
	s := clientOf(t, srv, Config{Retries: 2})
	ctx := context.Background()
	for name := range answers {
		t.Run(name, func(t *testing.T) {
			key := "payments/p/" + name + "/x.tar.age"
			o, err := s.Open(ctx, key)
			if err != nil {
				return // refused: right
			}
			defer o.Close()
			if name == "whole-object-for-a-range" {
				buf := make([]byte, 5)
				n, err := o.(io.ReaderAt).ReadAt(buf, 5)
				if err == nil && string(buf[:n]) != obj[5:] {
					t.Errorf("ReadAt(5) believed %q, the object's bytes 5-9 are %q", buf[:n], obj[5:])
				}
				return
			}
			got, err := io.ReadAll(o)
			if err == nil && string(got) != obj {
				t.Errorf("read %q without an error, the object is %q", got, obj)
			}
		})
	}
}

func partial(w http.ResponseWriter, first, last int, obj string) {
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, last, len(obj)))
	w.Header().Set("Content-Length", strconv.Itoa(last-first+1))
	w.WriteHeader(http.StatusPartialContent)
	io.WriteString(w, obj[first:last+1])
}

// brokenAfter announces the whole object and breaks the connection after
// n bytes.
func brokenAfter(w http.ResponseWriter, obj string, n int) {
	w.Header().Set("Content-Length", strconv.Itoa(len(obj)))
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, obj[:n])
	w.(http.Flusher).Flush()
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err == nil {
		buf.Flush()
		conn.Close()
	}
}

// TestStalledAnswerResumes: a service that announces an object, sends part
// of it and then neither sends more nor hangs up (over HTTP/1.1 nothing
// else tells the client the connection is dead) is given up on after the
// client's idle timeout, and the download resumes with Range like one
// whose connection broke — instead of the client waiting for ever.
func TestStalledAnswerResumes(t *testing.T) {
	const obj = "0123456789"
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "" {
			w.Header().Set("Content-Length", "10")
			io.WriteString(w, obj[:4])
			w.(http.Flusher).Flush()
			select { // stall
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		partial(w, 4, 9, obj)
	}))
	srv.StartTLS()
	defer srv.Close()
	defer close(release) // before Close, which waits for the stalled handler
	s := clientOf(t, srv, Config{})
	s.idle = 500 * time.Millisecond
	done := make(chan string, 1)
	go func() {
		o, err := s.Open(context.Background(), "payments/p/c/x.tar.age")
		if err != nil {
			done <- "open: " + err.Error()
			return
		}
		defer o.Close()
		b, err := io.ReadAll(o)
		if err != nil {
			done <- "read: " + err.Error()
			return
		}
		done <- string(b)
	}()
	select {
	case got := <-done:
		if got != obj {
			t.Errorf("download of a stalled answer: %q, want %q (resumed)", got, obj)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the client still waits, 30 s after the service stalled with an idle timeout of 0.5 s")
	}
}
