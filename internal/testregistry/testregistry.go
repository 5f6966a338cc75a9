// Package testregistry runs a real OCI distribution registry on loopback
// for tests: go-containerregistry's pkg/registry (the implementation its
// own tests and crane's use), behind TLS with a certificate from a
// throw-away CA, optionally behind HTTP basic authentication so that
// clients must find credentials the way users give them (a docker
// config.json).
//
// Test-only code.
package testregistry

import (
	"bufio"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
)

// Registry is a running registry.
type Registry struct {
	// Host is HOST:PORT, the registry part of an image reference.
	Host string
	// CAFile is the PEM CA certificate that signed the server's
	// certificate ("" for a plain HTTP registry); Pool holds it.
	CAFile string
	Pool   *x509.CertPool
	// DockerConfig is a directory holding a config.json with this
	// registry's credentials (for $DOCKER_CONFIG), when it requires them.
	DockerConfig string
}

// Options configure Start.
type Options struct {
	// User and Password, when set, are required with HTTP basic auth.
	User, Password string
	// PlainHTTP serves without TLS (to test that clients refuse it).
	PlainHTTP bool
}

// Start runs a registry until the test ends. Blobs are kept on disk in a
// test directory.
func Start(tb testing.TB, opts Options) *Registry {
	tb.Helper()
	dir := tb.TempDir()
	blobs := filepath.Join(dir, "blobs")
	if err := os.Mkdir(blobs, 0o700); err != nil {
		tb.Fatal(err)
	}
	var h http.Handler = registry.New(
		registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs)),
		registry.Logger(log.New(io.Discard, "", 0)),
	)
	if opts.User != "" {
		h = basicAuth(h, opts.User, opts.Password)
	}
	r := &Registry{}
	var srv *httptest.Server
	if opts.PlainHTTP {
		srv = httptest.NewServer(h)
	} else {
		ca, err := testservers.NewCA(dir, "testregistry")
		if err != nil {
			tb.Fatal(err)
		}
		leaf, err := ca.Leaf()
		if err != nil {
			tb.Fatal(err)
		}
		srv = httptest.NewUnstartedServer(h)
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12}
		srv.StartTLS()
		r.CAFile, r.Pool = ca.CertFile, ca.Pool()
	}
	tb.Cleanup(srv.Close)
	r.Host = srv.Listener.Addr().String()
	if opts.User != "" {
		r.DockerConfig = filepath.Join(dir, "docker")
		if err := os.Mkdir(r.DockerConfig, 0o700); err != nil {
			tb.Fatal(err)
		}
		cfg := map[string]any{"auths": map[string]any{r.Host: map[string]string{
			"auth": base64.StdEncoding.EncodeToString([]byte(opts.User + ":" + opts.Password)),
		}}}
		b, _ := json.Marshal(cfg)
		if err := os.WriteFile(filepath.Join(r.DockerConfig, "config.json"), b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return r
}

// basicAuth answers 401 with a Basic challenge, as registries with
// htpasswd authentication do, until the right credentials come.
func basicAuth(next http.Handler, user, pass string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		u, p, ok := req.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(pass)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="testregistry"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// childEnv tells a re-executed test binary to serve a registry instead of
// running tests (see StartProcess).
const childEnv = "CKVAULT_TESTREGISTRY_CHILD"

// ServeIfChild, called first in TestMain, turns a test binary started by
// StartProcess into a registry server: it serves TLS on a loopback port
// with the certificate and key files named in the environment, prints the
// address on standard output, and serves until its standard input closes.
func ServeIfChild() {
	dir := os.Getenv(childEnv)
	if dir == "" {
		return
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"))
	if err != nil {
		log.Fatal(err)
	}
	blobs := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		log.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(registry.New(
		registry.WithBlobHandler(registry.NewDiskBlobHandler(blobs)),
		registry.Logger(log.New(io.Discard, "", 0)),
	))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	os.Stdout.WriteString(srv.Listener.Addr().String() + "\n")
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	os.Exit(0)
}

// StartProcess runs the registry in a child process (the test binary
// itself, whose TestMain must call ServeIfChild), so that its memory — it
// holds uploads in memory until they complete — does not count in the
// test process's own peak RSS.
func StartProcess(tb testing.TB) *Registry {
	tb.Helper()
	dir := tb.TempDir()
	ca, err := testservers.NewCA(dir, "testregistry")
	if err != nil {
		tb.Fatal(err)
	}
	if _, _, err := ca.Issue(dir, "server.crt", "server.key"); err != nil {
		tb.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("registry child: %v", err)
	}
	return &Registry{Host: strings.TrimSpace(addr), CAFile: ca.CertFile, Pool: ca.Pool()}
}
