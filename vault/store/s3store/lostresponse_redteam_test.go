package s3store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

// losingTransport performs the first request that commits an object (a
// single PUT of object data, or CompleteMultipartUpload) and then loses
// its response, as a connection reset after the server answered would.
type losingTransport struct {
	http.RoundTripper
	lost atomic.Int32
}

func (t *losingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	q := r.URL.Query()
	commits := (r.Method == http.MethodPost && q.Has("uploadId")) ||
		(r.Method == http.MethodPut && !q.Has("uploadId") && !q.Has("partNumber") && r.URL.RawQuery == "")
	resp, err := t.RoundTripper.RoundTrip(r)
	if err == nil && commits && resp.StatusCode == http.StatusOK && t.lost.CompareAndSwap(0, 1) {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, errors.New("injected: connection reset after the server stored the object")
	}
	return resp, err
}

// TestCreateOnlyLostResponse: a create-only Put whose bytes the server
// stored but whose response was lost (the ciphertext's Put in the daemon:
// a one-pass stream that cannot be sent again). The object under the key
// is exactly what was sent — same size, same full-object CRC64NVME — so
// the Put has succeeded and must say so. Before the fix it failed (and
// minio-go's retry of the completion then met ErrExists or NoSuchUpload):
// the daemon abandoned the attempt, re-read the whole archive, and under
// compliance Object Lock left a locked orphan for the retention period.
func TestCreateOnlyLostResponse(t *testing.T) {
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testservers.Shared(t, kind)
			for _, size := range []int64{8 << 20, 40 << 20} { // single PUT, multipart
				lt := &losingTransport{}
				s := newFor(t, srv, func(c *Config) {
					tlsCfg, err := tlsConfig(*c)
					if err != nil {
						t.Fatal(err)
					}
					tr := http.DefaultTransport.(*http.Transport).Clone()
					tr.TLSClientConfig = tlsCfg
					lt.RoundTripper = tr
					c.Transport = lt
				})
				data := storetest.Data(uint64(size)+7, size)
				// Not seekable, like the daemon's sealing stream.
				r := io.MultiReader(bytes.NewReader(data))
				oi, err := s.Put(context.Background(), "lost/obj", r, size, store.PutOptions{IfAbsent: true})
				if lt.lost.Load() != 1 {
					t.Fatalf("%d bytes: no response was lost (the test's transport did not match)", size)
				}
				if err != nil {
					t.Errorf("%d bytes: create-only Put whose response was lost after the server stored it: %v", size, err)
					continue
				}
				if oi.Size != size || oi.Checksum != storetest.CRC64NVME(data) {
					t.Errorf("%d bytes: Put reports %+v", size, oi)
				}
			}
		})
	}
}
