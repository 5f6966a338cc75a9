package service

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestTLSCertificateReload: serve.tlsCert/tlsKey are read again when they
// change on disk, without a restart. New connections get the renewed
// certificate; a client connected before keeps its connection (and the
// certificate it was made with) until it reconnects; a broken renewal
// (garbage, or a certificate without its key yet) keeps the previous
// certificate in service until the files are whole again. Two ways of
// renewing: writing new files and renaming them over the old (cert-manager,
// most tools), and a Kubernetes Secret volume's swap of its ..data symlink.
func TestTLSCertificateReload(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", noStart: true})
	// The Secret volume layout: serve.crt -> ..data/serve.crt, ..data ->
	// ..v1 (a directory). The configuration names the outer links.
	vol := filepath.Join(e.dir, "secret")
	crt, key := filepath.Join(vol, "serve.crt"), filepath.Join(vol, "serve.key")
	writeVersion := func(name string) string {
		t.Helper()
		d := filepath.Join(vol, name)
		must(t, os.MkdirAll(d, 0o700))
		_, _, err := e.ca.Issue(d, "serve.crt", "serve.key")
		must(t, err)
		return serialOf(t, filepath.Join(d, "serve.crt"))
	}
	first := writeVersion("..v1")
	must(t, os.Symlink("..v1", filepath.Join(vol, "..data")))
	must(t, os.Symlink("..data/serve.crt", crt))
	must(t, os.Symlink("..data/serve.key", key))
	e.cfg.Serve.TLSCert, e.cfg.Serve.TLSKey = crt, key
	e.start(Setup{})

	// A client that keeps its connection.
	old := e.client("alice")
	if got := servedSerial(t, e, old, false); got != first {
		t.Fatalf("first certificate: serial %s, want %s", got, first)
	}

	// Renewal 1: the Secret's symlink swap (a new ..vN, ..data renamed to
	// point at it).
	second := writeVersion("..v2")
	must(t, os.Symlink("..v2", filepath.Join(vol, "..data.tmp")))
	must(t, os.Rename(filepath.Join(vol, "..data.tmp"), filepath.Join(vol, "..data")))
	waitServed(t, e, second, "after the ..data symlink swap")
	if got := servedSerial(t, e, old, true); got != first {
		t.Errorf("the connection made before the renewal: serial %s, want the one it was made with (%s)", got, first)
	}
	old.Transport.(*http.Transport).CloseIdleConnections()
	if got := servedSerial(t, e, old, false); got != second {
		t.Errorf("the old client, reconnected: serial %s, want the renewed %s", got, second)
	}

	// Renewal 2: plain files renamed over the configured paths (replacing
	// the links).
	third := writeVersion("plain")
	must(t, os.Rename(filepath.Join(vol, "plain", "serve.crt"), crt))
	must(t, os.Rename(filepath.Join(vol, "plain", "serve.key"), key))
	waitServed(t, e, third, "after renaming new files over the old")

	// A broken renewal: the certificate arrives before its key. The
	// service keeps serving the last good pair, then takes the new pair
	// once the key follows.
	d := filepath.Join(vol, "next")
	must(t, os.MkdirAll(d, 0o700))
	_, _, err := e.ca.Issue(d, "serve.crt", "serve.key")
	must(t, err)
	fourth := serialOf(t, filepath.Join(d, "serve.crt"))
	must(t, os.Rename(filepath.Join(d, "serve.crt"), crt))
	time.Sleep(1100 * time.Millisecond) // past the reloader's once-a-second check
	if got := servedSerial(t, e, e.client("alice"), false); got != third {
		t.Errorf("certificate without its key: serving %s, want the last good %s", got, third)
	}
	must(t, os.WriteFile(key+".new", []byte("garbage"), 0o600))
	must(t, os.Rename(key+".new", key))
	time.Sleep(1100 * time.Millisecond)
	if got := servedSerial(t, e, e.client("alice"), false); got != third {
		t.Errorf("garbage key: serving %s, want the last good %s", got, third)
	}
	must(t, os.Rename(filepath.Join(d, "serve.key"), key))
	waitServed(t, e, fourth, "once the key followed")
}

// serialOf is the serial number of the PEM certificate in file.
func serialOf(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	must(t, err)
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", file)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	must(t, err)
	return c.SerialNumber.String()
}

// servedSerial makes one authenticated request with c and returns the
// serial of the certificate the service presented on that connection;
// reused says whether the connection must be one made before.
func servedSerial(t *testing.T, e *env, c *http.Client, reused bool) string {
	t.Helper()
	var wasReused bool
	req, _ := http.NewRequest(http.MethodGet, e.url()+"/v1/checkpoints?namespace=payments", nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { wasReused = i.Reused },
	}))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	io.Copy(io.Discard, resp.Body) // read to the end, so the connection is kept
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("request: %s", resp.Status)
	}
	if wasReused != reused {
		t.Fatalf("connection reused = %v, want %v", wasReused, reused)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.String()
}

// waitServed waits until a new connection is served the certificate with
// serial want (the reloader looks at the files at most once a second).
func waitServed(t *testing.T, e *env, want, when string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = servedSerial(t, e, e.client("alice"), false); got == want {
			return
		}
	}
	t.Fatalf("%s: new connections still get serial %s, want %s", when, got, want)
}
