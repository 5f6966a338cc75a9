package service

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/remote"
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

// TestClientCertificateOutsideValidityOrUsage: certificates the service's
// own client CA issued, but expired, not valid yet, or for servers only
// (extended key usage serverAuth). The TLS layer only requests the
// certificate, so each reaches verifyClientCert: each must be a 401 whose
// error names the problem and the fix, nothing served, and a denied record
// (auth "rejected certificate", the reason, status 401) in the service's
// trail — never the identity "alice" its CN names, which has grants.
func TestClientCertificateOutsideValidityOrUsage(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", perNS: 1})
	now := time.Now()
	expiredAt := now.Add(-time.Hour).Truncate(time.Second)
	validFrom := now.Add(time.Hour).Truncate(time.Second)
	for _, c := range []struct {
		name string
		edit func(*x509.Certificate)
		want []string // in the error, and in the record's reason
	}{
		{"expired", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = expiredAt.Add(-24*time.Hour), expiredAt },
			[]string{"expired at " + expiredAt.UTC().Format(time.RFC3339), "issue a new certificate"}},
		{"not-yet-valid", func(c *x509.Certificate) { c.NotBefore, c.NotAfter = validFrom, validFrom.Add(24*time.Hour) },
			[]string{"not valid until " + validFrom.UTC().Format(time.RFC3339), "clock"}},
		{"server-only", func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth} },
			[]string{"not for client authentication", "serverAuth", "issue a certificate with extended key usage clientAuth"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cf, kf, err := e.ca.IssueClientWith(e.dir, "alice-"+c.name, "alice", c.edit)
			must(t, err)
			kp, err := tls.LoadX509KeyPair(cf, kf)
			must(t, err)
			// Sent whatever the client's own checks would say.
			forced := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.ca.Pool(), MinVersion: tls.VersionTLS12,
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }}}, Timeout: 30 * time.Second}
			before := len(e.records(audit.Filter{Actor: "unauthenticated:127.0.0.1"}))
			a := e.get(forced, "/v1/checkpoints?namespace=payments")
			if a.code != http.StatusUnauthorized {
				t.Fatalf("%s certificate: %d %s, want 401", c.name, a.code, a.body)
			}
			var body remote.Error
			if err := json.Unmarshal(a.body, &body); err != nil {
				t.Fatalf("the 401 is not a JSON error: %v: %s", err, a.body)
			}
			t.Logf("%s: %s", c.name, body.Error)
			for _, w := range c.want {
				if !strings.Contains(body.Error, w) {
					t.Errorf("the error %q does not say %q", body.Error, w)
				}
			}
			if bytes.Contains(a.body, []byte(e.vaulted["payments"][0].Object)) {
				t.Errorf("the 401 carries a checkpoint: %s", a.body)
			}
			recs := e.records(audit.Filter{Actor: "unauthenticated:127.0.0.1"})
			if len(recs) != before+1 {
				t.Fatalf("%d records of unauthenticated requests, want %d", len(recs), before+1)
			}
			r := recs[len(recs)-1]
			if r.Action != "denied" || r.Outcome != audit.Denied || r.Detail["status"] != "401" || r.Detail["auth"] != "rejected certificate" ||
				!strings.Contains(r.Detail["reason"], c.want[0]) || r.Namespace != "" && r.Namespace != "payments" {
				t.Errorf("its record: %+v", r)
			}
			for _, r := range e.records(audit.Filter{Actor: "cert:alice"}) {
				t.Errorf("the %s certificate became alice: %+v", c.name, r)
			}
		})
	}
}
