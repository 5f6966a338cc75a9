// Package testservers starts real S3 servers — MinIO and versitygw — on
// loopback for tests, with TLS on, a freshly generated CA and server
// certificate, and an Object-Lock-enabled (hence versioned) bucket.
//
// Servers are found with internal/testtools: a missing binary skips the
// test locally and fails it in CI. Starting a server takes a second or two,
// so a test package normally shares one per kind:
//
//	func TestMain(m *testing.M) { os.Exit(testservers.Main(m)) }
//
//	func TestX(t *testing.T) {
//		srv := testservers.Shared(t, testservers.MinIO)
//		... srv.Endpoint, srv.CAFile, srv.AccessKey, srv.SecretKey, srv.Bucket
//	}
//
// Tests that kill or restart a server take their own with New.
package testservers

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

// Kind names a server implementation; it is also the tool's binary name.
type Kind string

const (
	MinIO     Kind = "minio"
	VersityGW Kind = "versitygw"
)

// Kinds lists every server kind, for tests that run against all of them.
var Kinds = []Kind{MinIO, VersityGW}

// Server is one running S3 server.
type Server struct {
	Kind Kind
	// Endpoint is the base URL, https://127.0.0.1:PORT.
	Endpoint string
	// Host is 127.0.0.1:PORT.
	Host string
	// CAFile is the PEM CA certificate that signed the server's
	// certificate; CA can issue more (for proxies and client certs).
	CAFile string
	CA     *CA
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string
	// Bucket exists, with Object Lock (and therefore versioning) enabled.
	Bucket string
	// Dir is a scratch directory for this server's files (certificates,
	// data) that tests may also use.
	Dir string

	bin     string
	dataDir string
	logFile string
	env     []string // added to the process's environment

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	stopped bool
}

// New starts a server of the given kind for this test alone; it is killed
// when the test ends.
func New(tb testing.TB, kind Kind) *Server {
	tb.Helper()
	return newWithEnv(tb, kind)
}

func newWithEnv(tb testing.TB, kind Kind, env ...string) *Server {
	tb.Helper()
	bin := testtools.Path(tb, string(kind))
	dir, err := os.MkdirTemp("", "ckvault-"+string(kind)+"-")
	if err != nil {
		tb.Fatal(err)
	}
	s, err := start(kind, bin, dir, env...)
	if err != nil {
		os.RemoveAll(dir)
		tb.Fatalf("start %s: %v", kind, err)
	}
	tb.Cleanup(func() {
		s.Stop()
		os.RemoveAll(dir)
	})
	return s
}

var shared struct {
	sync.Mutex
	servers map[Kind]*Server
	errs    map[Kind]error
}

// Shared returns the package-wide server of this kind, starting it on first
// use. Main stops it when the package's tests end; without Main it dies
// with the test binary (the child is started with a parent-death signal).
// Tests must not stop a shared server, and should keep their objects under
// a prefix of their own.
func Shared(tb testing.TB, kind Kind) *Server {
	tb.Helper()
	bin := testtools.Path(tb, string(kind))
	shared.Lock()
	defer shared.Unlock()
	if s := shared.servers[kind]; s != nil {
		return s
	}
	if err := shared.errs[kind]; err != nil {
		tb.Fatalf("start %s: %v (failed earlier in this package)", kind, err)
	}
	dir, err := os.MkdirTemp("", "ckvault-"+string(kind)+"-")
	if err != nil {
		tb.Fatal(err)
	}
	s, err := start(kind, bin, dir)
	if shared.servers == nil {
		shared.servers, shared.errs = map[Kind]*Server{}, map[Kind]error{}
	}
	if err != nil {
		os.RemoveAll(dir)
		shared.errs[kind] = err
		tb.Fatalf("start %s: %v", kind, err)
	}
	shared.servers[kind] = s
	return s
}

// Main runs the package's tests, then stops the shared servers and removes
// their files. Use it from TestMain.
func Main(m *testing.M) int {
	code := m.Run()
	shared.Lock()
	defer shared.Unlock()
	for _, s := range shared.servers {
		s.Stop()
		os.RemoveAll(s.Dir)
	}
	shared.servers = nil
	return code
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freePort asks the kernel for an unused loopback port. Another process
// could take it before the server binds; start retries on that.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start(kind Kind, bin, dir string, env ...string) (*Server, error) {
	ca, err := NewCA(dir, "ckvault test CA for "+string(kind))
	if err != nil {
		return nil, err
	}
	s := &Server{
		Kind:      kind,
		CAFile:    ca.CertFile,
		CA:        ca,
		AccessKey: "ck" + randomHex(8),
		SecretKey: randomHex(20),
		Bucket:    "vault-" + randomHex(4),
		Dir:       dir,
		bin:       bin,
		dataDir:   filepath.Join(dir, "data"),
		logFile:   filepath.Join(dir, "server.log"),
		env:       env,
	}
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	// MinIO wants exactly these names in its --certs-dir.
	if _, _, err := ca.Issue(certDir, "public.crt", "private.key"); err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Host = fmt.Sprintf("127.0.0.1:%d", port)
		s.Endpoint = "https://" + s.Host
		if lastErr = s.Start(); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	if err := s.createBucket(s.Bucket, true); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) args() ([]string, []string) {
	certDir := filepath.Join(s.Dir, "certs")
	switch s.Kind {
	case MinIO:
		console, _ := freePort()
		return []string{"server", "--quiet", "--certs-dir", certDir, "--address", s.Host,
				"--console-address", fmt.Sprintf("127.0.0.1:%d", console), s.dataDir},
			[]string{"MINIO_ROOT_USER=" + s.AccessKey, "MINIO_ROOT_PASSWORD=" + s.SecretKey,
				"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1"}
	case VersityGW:
		versions := filepath.Join(s.Dir, "versions")
		os.MkdirAll(versions, 0o700)
		return []string{"--port", s.Host, "--cert", filepath.Join(certDir, "public.crt"),
				"--key", filepath.Join(certDir, "private.key"), "--quiet",
				"posix", "--versioning-dir", versions, s.dataDir},
			[]string{"ROOT_ACCESS_KEY_ID=" + s.AccessKey, "ROOT_SECRET_ACCESS_KEY=" + s.SecretKey}
	}
	panic("unknown server kind " + s.Kind)
}

// Start (re)starts the server process on the same port and data directory
// and waits until it answers authenticated requests.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return fmt.Errorf("%s on %s is already running", s.Kind, s.Host)
	}
	args, env := s.args()
	log, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(append(os.Environ(), env...), s.env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(exited) }()
	s.cmd, s.exited, s.stopped = cmd, exited, false

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := s.client()
	if err != nil {
		return err
	}
	for {
		err := s.ready(ctx, c)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("%s exited during start-up: %s", s.Kind, s.tail())
		case <-ctx.Done():
			s.killLocked()
			return fmt.Errorf("%s on %s not ready after 90s: %v; log: %s", s.Kind, s.Host, err, s.tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ready reports whether the server answers an authenticated S3 request
// and, for MinIO, has loaded its IAM state. MinIO answers S3 requests with
// root credentials before that first load ends, and the first load replaces
// its whole IAM cache with what it read from disk (cmd/iam-store.go,
// LoadIAMCache: "|| firstTime"): a policy or user a test adds in that window
// is stored but forgotten, and attaching the policy then fails with "The
// canned policy does not exist" (seen once in CI, in TestBucketPolicies).
// madmin's ListUsers blocks until the first load is done.
func (s *Server) ready(ctx context.Context, c *minio.Client) error {
	if _, err := c.ListBuckets(ctx); err != nil {
		return err
	}
	if s.Kind != MinIO {
		return nil
	}
	adm, err := s.admin()
	if err != nil {
		return err
	}
	_, err = adm.ListUsers(ctx)
	return err
}

// Stop kills the server at once (SIGKILL: the point is to simulate a crash
// or an outage) and waits for it to exit. Stopping a stopped server is a
// no-op.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
	s.stopped = true
}

func (s *Server) tail() string {
	b, _ := os.ReadFile(s.logFile)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Log returns the end of the server's log, for test failure messages.
func (s *Server) Log() string { return s.tail() }

// Pid is the server process's id (0 when it is not running): benchmarks
// read its CPU time to account for where a run's cycles went.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil || s.stopped {
		return 0
	}
	return s.cmd.Process.Pid
}

// HTTPClient returns an HTTP client that trusts the server's CA.
func (s *Server) HTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: s.CA.Pool(), MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}
}

func (s *Server) client() (*minio.Client, error) {
	return minio.New(s.Host, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure:       true,
		Transport:    s.HTTPClient().Transport,
		Region:       "us-east-1",
		BucketLookup: minio.BucketLookupPath,
		MaxRetries:   1,
	})
}

// Client returns a minio-go client with root credentials, for tests that
// must look at or arrange the server's state behind the store's back.
func (s *Server) Client(tb testing.TB) *minio.Client {
	tb.Helper()
	c, err := s.client()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func (s *Server) admin() (*madmin.AdminClient, error) {
	adm, err := madmin.New(s.Host, s.AccessKey, s.SecretKey, true)
	if err != nil {
		return nil, err
	}
	adm.SetCustomTransport(s.HTTPClient().Transport)
	return adm, nil
}

// Admin returns a MinIO admin client with root credentials, for tests that
// create identities and policies. The server has finished loading its IAM
// state (see ready), so what they add is kept.
func (s *Server) Admin(tb testing.TB) *madmin.AdminClient {
	tb.Helper()
	if s.Kind != MinIO {
		tb.Fatalf("%s has no MinIO admin API", s.Kind)
	}
	adm, err := s.admin()
	if err != nil {
		tb.Fatal(err)
	}
	return adm
}

// NewBucket creates another bucket, with or without Object Lock, and
// returns its name.
func (s *Server) NewBucket(tb testing.TB, objectLock bool) string {
	tb.Helper()
	name := "b-" + randomHex(6)
	if err := s.createBucket(name, objectLock); err != nil {
		tb.Fatal(err)
	}
	return name
}

func (s *Server) createBucket(name string, objectLock bool) error {
	c, err := s.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1", ObjectLocking: objectLock})
	if err != nil {
		return fmt.Errorf("create bucket %s on %s %s: %w", name, s.Kind, s.Host, err)
	}
	if objectLock {
		// Object Lock implies versioning on AWS and MinIO; say so
		// explicitly for gateways that keep the two apart.
		v, err := c.GetBucketVersioning(ctx, name)
		if err != nil || !v.Enabled() {
			if err := c.EnableVersioning(ctx, name); err != nil {
				return fmt.Errorf("enable versioning on %s: %w", name, err)
			}
		}
	}
	return nil
}

// StoreURL is the store URL (https://HOST/BUCKET[/PREFIX]) for bucket and
// prefix on this server.
func (s *Server) StoreURL(bucket, prefix string) string {
	u := s.Endpoint + "/" + bucket
	if prefix != "" {
		u += "/" + strings.Trim(prefix, "/")
	}
	return u
}

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}
