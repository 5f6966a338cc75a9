package s3store

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

// TestClientCertificate puts a TLS front end that requires a client
// certificate from the test CA (as an mTLS-only gateway would) before a real
// server: without clientCert the store fails with a permanent error that
// says what to set; with it, objects go through.
func TestClientCertificate(t *testing.T) {
	srv := testservers.Shared(t, testservers.VersityGW)
	target, _ := url.Parse(srv.Endpoint)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
		},
		Transport: srv.HTTPClient().Transport,
	}
	front := httptest.NewUnstartedServer(rp)
	leaf, err := srv.CA.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	front.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: srv.CA.Pool()}
	front.StartTLS()
	defer front.Close()
	u := "https://" + front.Listener.Addr().String() + "/" + srv.Bucket + "/" + storetest.RandomPrefix()

	s := newFor(t, srv, func(c *Config) { c.URL = u })
	err = s.Check(context.Background())
	if !errors.Is(err, store.ErrPermanent) || !strings.Contains(err.Error(), "clientCert") {
		t.Errorf("Check without a client certificate = %v, want a permanent error naming clientCert", err)
	}

	certFile, keyFile, err := srv.CA.Issue(t.TempDir(), "client.crt", "client.key")
	if err != nil {
		t.Fatal(err)
	}
	s = newFor(t, srv, func(c *Config) { c.URL = u; c.ClientCert, c.ClientKey = certFile, keyFile })
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check with a client certificate: %v", err)
	}
	if _, err := s.Put(context.Background(), "x", strings.NewReader("hello"), 5, store.PutOptions{}); err != nil {
		t.Fatalf("Put through mTLS: %v", err)
	}
	if _, err := New(Config{URL: u, ClientCert: certFile}); !errors.Is(err, store.ErrPermanent) {
		t.Errorf("New with a client cert but no key = %v, want ErrPermanent", err)
	}
}
