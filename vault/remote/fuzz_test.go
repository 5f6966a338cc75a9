package remote

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// answerTransport answers every request with one fixed answer: the
// fuzzer's stand-in for a service that sends anything at all.
type answerTransport struct {
	status int
	hdr    http.Header
	body   []byte
}

func (a answerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: a.status, Status: strconv.Itoa(a.status), Header: a.hdr.Clone(),
		Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body)), Request: r}, nil
}

func fuzzStore(a answerTransport) *Store {
	u, _ := url.Parse("https://vault.example:8443")
	return &Store{base: u, hc: &http.Client{Transport: a}, cfg: Config{Token: "t"}, retries: 1, idle: idleTimeout, inline: map[string]inlineObject{}}
}

// FuzzClientAnswers: whatever a (malicious) service answers — status,
// Content-Range, Content-Length, body — the client neither panics nor
// believes more than it may: a listing of a prefix yields only keys under
// it, an object stream never yields more bytes than the size it settled
// on, a Content-Range it accepts is inside the object, and a 206 is
// accepted only for the bytes it was asked for.
func FuzzClientAnswers(f *testing.F) {
	f.Add(200, "", []byte(`{"items":[{"id":"a","base":"payments/p/c/x","objects":[{"key":"payments/p/c/x.manifest.json","size":3}],"manifest":"eyJ9","signatures":{".sig":"AA=="}}],"next":"payments/p/c/x"}`))
	f.Add(200, "", []byte(`{"items":[{"base":"other/p/c/x","objects":[{"key":"other/p/c/x.tar.age","size":1}]}]}`))
	f.Add(206, "bytes 5-9/10", []byte("01234"))
	f.Add(206, "bytes 0-4/3", []byte("0123456789"))
	f.Add(206, "bytes -1-/-1", []byte(""))
	f.Add(200, "", []byte(`{"items":null}`))
	f.Fuzz(func(t *testing.T, status int, contentRange string, body []byte) {
		if status < 100 || status > 599 {
			status = 200
		}
		// 429 and 503 are retried after their Retry-After; there is none
		// here, so the backoff would only slow the fuzzer down.
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			status = http.StatusBadGateway
		}
		hdr := http.Header{}
		if contentRange != "" {
			hdr.Set("Content-Range", contentRange)
		}
		s := fuzzStore(answerTransport{status: status, hdr: hdr, body: body})
		ctx := context.Background()

		const prefix = "payments/"
		objs, _, err := s.List(ctx, prefix, "", 10)
		if err == nil {
			for _, o := range objs {
				if !strings.HasPrefix(o.Key, prefix) {
					t.Fatalf("listing of %q accepted %q", prefix, o.Key)
				}
			}
			for k := range s.inline {
				if !strings.HasPrefix(k, prefix) {
					t.Fatalf("listing of %q kept inline bytes for %q", prefix, k)
				}
			}
		}

		if first, last, total, err := parseContentRange(contentRange); err == nil && (first < 0 || last < first || total <= last) {
			t.Fatalf("parseContentRange(%q) = %d, %d, %d: outside an object", contentRange, first, last, total)
		}

		o, err := s.Open(ctx, "payments/p/c/x.tar.age")
		if err != nil {
			return
		}
		defer o.Close()
		size := o.Info().Size
		if size < 0 {
			t.Fatalf("object size %d", size)
		}
		// A partial answer to a read from byte 0 is believed only if it
		// announces bytes 0 to the end: its bytes go where it says.
		if first, last, total, err := parseContentRange(contentRange); status == http.StatusPartialContent && (err != nil || first != 0 || last != total-1) {
			t.Fatalf("Open accepted a 206 with Content-Range %q for a read from byte 0", contentRange)
		}
		n, _ := io.Copy(io.Discard, io.LimitReader(o, size+1<<20))
		if n > size {
			t.Fatalf("read %d bytes of an object of %d", n, size)
		}
	})
}
