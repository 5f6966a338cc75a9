package service

import (
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
)

// TestForcedForeignCertificateIsRecorded: a client that sends a certificate
// from another CA even though the service names its own (curl does; Go's
// client does not) gets a 401 with an audit record, like every refusal —
// not a TLS handshake failure that only the server's log sees. The same
// certificate's CN ("alice") never becomes alice.
func TestForcedForeignCertificateIsRecorded(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", perNS: 1})
	forced := func(name string) *http.Client {
		c := e.certs[name]
		kp, err := tls.LoadX509KeyPair(c[0], c[1])
		if err != nil {
			t.Fatal(err)
		}
		tc := &tls.Config{RootCAs: e.ca.Pool(), MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
	}
	before := len(e.records(audit.Filter{Actor: "unauthenticated:127.0.0.1"}))
	a := e.get(forced("stranger"), "/v1/checkpoints?namespace=payments")
	if a.code != http.StatusUnauthorized {
		t.Fatalf("a forced certificate from another CA: %d %s, want 401", a.code, a.body)
	}
	recs := e.records(audit.Filter{Actor: "unauthenticated:127.0.0.1"})
	if len(recs) != before+1 {
		t.Fatalf("%d records of unauthenticated requests, want %d (the forced certificate's)", len(recs), before+1)
	}
	if r := recs[len(recs)-1]; r.Outcome != audit.Denied || r.Detail["status"] != "401" {
		t.Errorf("its record: %+v", r)
	}
	for _, r := range e.records(audit.Filter{Actor: "cert:alice"}) {
		t.Errorf("the foreign certificate's CN became an identity: %+v", r)
	}
	// The CA's own certificates, sent the same way, still authenticate.
	if a := e.get(forced("alice"), "/v1/checkpoints?namespace=payments"); a.code != http.StatusOK {
		t.Fatalf("alice's own certificate: %d %s, want 200", a.code, a.body)
	}
}
