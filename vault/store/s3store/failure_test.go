package s3store

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/minio/crc64nvme"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

// forEachServer runs f against the shared server of every kind.
func forEachServer(t *testing.T, f func(t *testing.T, srv *testservers.Server)) {
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) { f(t, testservers.Shared(t, kind)) })
	}
}

func TestWrongCA(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testservers.Server) {
		other, err := testservers.NewCA(t.TempDir(), "some other CA")
		if err != nil {
			t.Fatal(err)
		}
		s := newFor(t, srv, func(c *Config) { c.CAFile = other.CertFile })
		err = s.Check(context.Background())
		if !errors.Is(err, store.ErrPermanent) {
			t.Fatalf("Check with the wrong CA = %v, want ErrPermanent", err)
		}
		for _, want := range []string{srv.Host, "unknown authority", "caFile"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not mention %q", err, want)
			}
		}
		// Without any CA bundle the system roots do not know our CA either.
		s = newFor(t, srv, func(c *Config) { c.CAFile = "" })
		if err := s.Check(context.Background()); !errors.Is(err, store.ErrPermanent) {
			t.Errorf("Check with system roots only = %v, want ErrPermanent", err)
		}
	})
}

func TestPlainHTTPRefused(t *testing.T) {
	_, err := New(Config{URL: "http://127.0.0.1:9000/bucket"})
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "plain http is refused") {
		t.Fatalf("New(http://) = %v, want a permanent refusal", err)
	}
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	for range 2 {
		if _, err := New(Config{URL: "http://127.0.0.1:9000/bucket", Insecure: true, Logger: log}); err != nil {
			t.Fatalf("New(http://, Insecure) = %v", err)
		}
	}
	if n := strings.Count(logged.String(), "level=WARN"); n != 2 {
		t.Errorf("got %d warnings for 2 insecure stores, want one per New:\n%s", n, logged.String())
	}
}

// TestHTTPSToPlainPort: an https:// URL pointing at a server that speaks
// plain HTTP fails clearly rather than hanging.
func TestHTTPSToPlainPort(t *testing.T) {
	plain := httptest.NewServer(http.NotFoundHandler())
	defer plain.Close()
	s, err := New(Config{URL: "https://" + plain.Listener.Addr().String() + "/bkt", Credentials: credentials.NewStaticV4("a", "b", "")})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Check(context.Background())
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Errorf("Check = %v, want a permanent 'does not speak TLS'", err)
	}
}

func TestBadCredentials(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testservers.Server) {
		const badSecret = "definitely-not-the-secret-0123456789"
		for _, tc := range []struct {
			name, ak, sk, want string
		}{
			{"wrong secret", srv.AccessKey, badSecret, "secret key"},
			{"unknown access key", "NOSUCHKEY0000", badSecret, "access key"},
		} {
			s := newFor(t, srv, func(c *Config) { c.Credentials = credentials.NewStaticV4(tc.ak, tc.sk, "") })
			err := s.Check(context.Background())
			if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: Check = %v, want a permanent error about the %s", tc.name, err, tc.want)
			}
			if err != nil && (strings.Contains(err.Error(), badSecret) || strings.Contains(err.Error(), srv.SecretKey)) {
				t.Errorf("%s: error leaks a secret: %v", tc.name, err)
			}
			if _, err := s.Put(context.Background(), "x", strings.NewReader("x"), 1, store.PutOptions{}); !errors.Is(err, store.ErrPermanent) {
				t.Errorf("%s: Put = %v, want ErrPermanent", tc.name, err)
			}
		}
	})
}

func TestKeyFiles(t *testing.T) {
	srv := testservers.Shared(t, testservers.VersityGW)
	dir := t.TempDir()
	ak, sk := dir+"/ak", dir+"/sk"
	writeFile(t, ak, srv.AccessKey+"\n")
	writeFile(t, sk, srv.SecretKey+"\n")
	s := newFor(t, srv, func(c *Config) { c.Credentials = nil; c.AccessKeyFile, c.SecretKeyFile = ak, sk })
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check with key files: %v", err)
	}
	if strings.Contains(s.Describe(), srv.AccessKey) {
		t.Errorf("Describe %q shows the access key", s.Describe())
	}
}

func TestMissingBucket(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testservers.Server) {
		s := newFor(t, srv, func(c *Config) { c.URL = srv.StoreURL("no-such-bucket-42", "p") })
		err := s.Check(context.Background())
		if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "no-such-bucket-42") || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("Check = %v, want a permanent 'bucket does not exist'", err)
		}
		_, err = s.Put(context.Background(), "x", strings.NewReader("x"), 1, store.PutOptions{})
		if !errors.Is(err, store.ErrPermanent) {
			t.Errorf("Put = %v, want ErrPermanent", err)
		}
	})
}

func TestBucketWithoutObjectLock(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testservers.Server) {
		b := srv.NewBucket(t, false)
		s := newFor(t, srv, func(c *Config) { c.URL = srv.StoreURL(b, "") })
		err := s.Check(context.Background())
		if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "Object Lock") {
			t.Errorf("Check = %v, want a permanent 'no Object Lock'", err)
		}
		s = newFor(t, srv, func(c *Config) { c.URL = srv.StoreURL(b, ""); c.RequireObjectLock = false })
		if err := s.Check(context.Background()); err != nil {
			t.Errorf("Check without retention configured = %v", err)
		}
	})
}

// killingReader yields data and kills the server once killAt bytes have
// been read: the server dies in the middle of the upload.
type killingReader struct {
	r      io.Reader
	n      int64
	killAt int64
	kill   func()
	killed bool
}

func (k *killingReader) Read(p []byte) (int, error) {
	if !k.killed && k.n >= k.killAt {
		k.kill()
		k.killed = true
	}
	n, err := k.r.Read(p)
	k.n += int64(n)
	return n, err
}

func TestServerKilledMidUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts dedicated servers")
	}
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testservers.New(t, kind)
			ctx := context.Background()
			for _, size := range []int64{8 << 20, 40 << 20} { // single PUT, multipart
				s := newFor(t, srv, func(c *Config) { c.Attempts = 2 })
				data := storetest.Data(uint64(size), size)
				kr := &killingReader{r: bytes.NewReader(data), killAt: size / 2, kill: srv.Stop}
				if _, err := s.Put(ctx, "obj", kr, size, store.PutOptions{}); err == nil {
					t.Fatalf("%d bytes: Put succeeded although the server died mid-upload", size)
				} else {
					t.Logf("%d bytes: Put failed as it must: %v", size, err)
				}
				if err := srv.Start(); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Stat(ctx, "obj"); !errors.Is(err, store.ErrNotExist) {
					t.Fatalf("%d bytes: after the crash Stat = %v, want ErrNotExist", size, err)
				}
				if objs, _, err := s.List(ctx, "", "", 0); err != nil || len(objs) != 0 {
					t.Fatalf("%d bytes: after the crash List = %v, %v", size, objs, err)
				}
				n, err := s.AbortStaleUploads(ctx, 0)
				if err != nil {
					t.Fatalf("AbortStaleUploads: %v", err)
				}
				t.Logf("%d bytes: aborted %d stale multipart uploads", size, n)
				oi, err := s.Put(ctx, "obj", bytes.NewReader(data), size, store.PutOptions{})
				if err != nil {
					t.Fatalf("%d bytes: retry after restart: %v", size, err)
				}
				if oi.Checksum != storetest.CRC64NVME(data) {
					t.Errorf("retry checksum %v", oi.Checksum)
				}
			}
		})
	}
}

// corruptingProxy is a TLS-terminating reverse proxy, trusted through the
// test CA like the server itself, that flips one byte of the body of every
// PUT carrying object data.
//
// For an aws-chunked body (a single PUT whose CRC64NVME travels in an
// unsigned trailer) it also rewrites the trailer to the checksum of the
// corrupted bytes, so the server accepts them: only our own comparison of
// the locally computed checksum with the server's can notice. For a plain
// body (a multipart part, whose checksum is a signed header the proxy
// cannot forge) the server itself rejects the part.
func corruptingProxy(t *testing.T, srv *testservers.Server, corrupted *atomic.Int32) string {
	target, _ := url.Parse(srv.Endpoint)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // the client signed this Host
			if pr.In.Method != http.MethodPut || pr.In.ContentLength < 1024 {
				return
			}
			body, err := io.ReadAll(pr.In.Body)
			if err != nil {
				// The client gave up on this request (minio-go cancels
				// the other parts once one is rejected): forward the
				// failure.
				pr.Out.Body = io.NopCloser(iotest.ErrReader(err))
				return
			}
			if strings.Contains(pr.In.Header.Get("Content-Encoding"), "aws-chunked") {
				body = corruptChunked(t, body)
			} else {
				body[len(body)/2] ^= 0x01
			}
			corrupted.Add(1)
			pr.Out.Body = io.NopCloser(bytes.NewReader(body))
			pr.Out.ContentLength = int64(len(body))
		},
		Transport: srv.HTTPClient().Transport,
	}
	p := httptest.NewUnstartedServer(rp)
	leaf, err := srv.CA.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	p.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	p.StartTLS()
	t.Cleanup(p.Close)
	return "https://" + p.Listener.Addr().String()
}

// corruptChunked flips a byte in the first chunk of an aws-chunked body
// and recomputes the x-amz-checksum-crc64nvme trailer over the decoded,
// corrupted data.
func corruptChunked(t *testing.T, body []byte) []byte {
	var data []byte
	rest := body
	first := true
	for {
		i := bytes.Index(rest, []byte("\r\n"))
		if i < 0 {
			t.Errorf("proxy: malformed aws-chunked body")
			return body
		}
		n, err := strconv.ParseInt(string(rest[:i]), 16, 64)
		if err != nil {
			t.Errorf("proxy: chunk size %q: %v", rest[:i], err)
			return body
		}
		start := i + 2
		if n == 0 {
			rest = rest[start:]
			break
		}
		if first {
			rest[start+int(n)/2] ^= 0x01 // in place: body shares the array
			first = false
		}
		data = append(data, rest[start:start+int(n)]...)
		rest = rest[start+int(n)+2:]
	}
	const name = "x-amz-checksum-crc64nvme:"
	i := bytes.Index(rest, []byte(name))
	if i < 0 {
		t.Errorf("proxy: no CRC64NVME trailer in %q", rest)
		return body
	}
	h := crc64nvme.New()
	h.Write(data)
	var sum [8]byte
	binary.BigEndian.PutUint64(sum[:], h.Sum64())
	enc := base64.StdEncoding.EncodeToString(sum[:])
	copy(rest[i+len(name):], enc) // same length: 12 base64 characters
	return body
}

func TestChecksumMismatchDetected(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testservers.Server) {
		var corrupted atomic.Int32
		proxy := corruptingProxy(t, srv, &corrupted)
		ctx := context.Background()
		for _, tc := range []struct {
			name string
			size int64
		}{
			{"single PUT, server accepts the corrupted bytes", 1 << 20},
			{"multipart, server rejects the corrupted part", 20 << 20},
		} {
			prefix := storetest.RandomPrefix()
			s := newFor(t, srv, func(c *Config) { c.URL = proxy + "/" + srv.Bucket + "/" + prefix; c.Attempts = 1 })
			direct := newFor(t, srv, func(c *Config) { c.URL = srv.StoreURL(srv.Bucket, prefix) })
			data := storetest.Data(uint64(tc.size), tc.size)
			before := corrupted.Load()
			_, err := s.Put(ctx, "obj", bytes.NewReader(data), tc.size, store.PutOptions{})
			if corrupted.Load() == before {
				t.Fatalf("%s: the proxy corrupted nothing; the test proves nothing", tc.name)
			}
			if !errors.Is(err, store.ErrIncomplete) {
				t.Fatalf("%s: Put through a corrupting proxy = %v, want ErrIncomplete", tc.name, err)
			}
			t.Logf("%s: %v", tc.name, err)
			if _, err := direct.Stat(ctx, "obj"); !errors.Is(err, store.ErrNotExist) {
				t.Errorf("%s: the corrupted object is still current: Stat = %v", tc.name, err)
			}
		}
	})
}

func TestLockedObjectSurvives(t *testing.T) {
	forEachServer(t, func(t *testing.T, srv *testservers.Server) {
		s := newFor(t, srv, nil)
		ctx := context.Background()
		data := []byte("sealed checkpoint")
		oi, err := s.Put(ctx, "k", bytes.NewReader(data), int64(len(data)), store.PutOptions{
			Retention: store.Retention{Mode: "governance", Until: time.Now().Add(time.Hour)},
		})
		if err != nil {
			t.Fatal(err)
		}
		// Behind the store's back, with root credentials and no bypass
		// header: the server itself must refuse to remove the version.
		if err := s.Delete(ctx, "k", oi.VersionID); !errors.Is(err, store.ErrLocked) {
			t.Errorf("Delete(version) = %v, want ErrLocked", err)
		}
		if _, err := s.Put(ctx, "k", strings.NewReader("evil"), 4, store.PutOptions{}); !errors.Is(err, store.ErrLocked) {
			t.Errorf("overwrite = %v, want ErrLocked", err)
		}
		if err := s.Delete(ctx, "k", ""); !errors.Is(err, store.ErrLocked) {
			t.Errorf("Delete = %v, want ErrLocked", err)
		}
		st, err := s.Stat(ctx, "k")
		if err != nil || st.VersionID != oi.VersionID || st.Size != int64(len(data)) {
			t.Errorf("Stat after the attempts = %+v, %v", st, err)
		}
	})
}

// TestOldTLSRefused: a store endpoint that offers only TLS 1.1, with a
// certificate the client trusts, is refused — the TLS 1.2 floor holds even
// where everything else about the connection checks out.
func TestOldTLSRefused(t *testing.T) {
	ca, err := testservers.NewCA(t.TempDir(), "old-tls")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	old := httptest.NewUnstartedServer(http.NotFoundHandler())
	old.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	old.StartTLS()
	defer old.Close()
	s, err := New(Config{URL: "https://" + old.Listener.Addr().String() + "/bkt", CAFile: ca.CertFile,
		Credentials: credentials.NewStaticV4("a", "b", "")})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("Check against a TLS 1.1 endpoint = %v, want a protocol version failure", err)
	}
	if _, err := s.Put(context.Background(), "x", strings.NewReader("x"), 1, store.PutOptions{}); err == nil {
		t.Error("Put over TLS 1.1 succeeded")
	}
}
