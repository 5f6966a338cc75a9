package service

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

func TestMain(m *testing.M) {
	code := testservers.Main(m)
	testkube.StopShared()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// backends: the embedded file store always; MinIO over TLS (Object Lock
// bucket) where installed (skipped locally without it, failed in CI).
var backends = []string{"file", string(testservers.MinIO)}

var (
	prefixMu sync.Mutex
	prefixN  int
)

// storeConfig is a fresh, empty store for one test.
func storeConfig(t testing.TB, backend string) policy.StoreConfig {
	t.Helper()
	if backend == "file" {
		return policy.StoreConfig{URL: "file://" + t.TempDir()}
	}
	srv := testservers.Shared(t, testservers.Kind(backend))
	dir := t.TempDir()
	ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	os.WriteFile(ak, []byte(srv.AccessKey+"\n"), 0o600)
	os.WriteFile(sk, []byte(srv.SecretKey+"\n"), 0o600)
	prefixMu.Lock()
	prefixN++
	prefix := fmt.Sprintf("serve-%d-%s", prefixN, filepath.Base(dir))
	prefixMu.Unlock()
	return policy.StoreConfig{URL: srv.StoreURL(srv.Bucket, prefix), CAFile: srv.CAFile, PathStyle: "path",
		AccessKeyFile: ak, SecretKeyFile: sk}
}

// env is a vault with checkpoints in two namespaces and a running service
// in front of it.
type env struct {
	t    testing.TB
	dir  string
	st   store.Store
	keys *testvault.Keys
	ca   *testservers.CA // signs the service's and the clients' certificates
	srv  *Server
	cfg  *policy.Config
	// cfgPath holds the configuration cfg was parsed from.
	cfgPath string
	// vaulted maps namespace -> manifests vaulted there.
	vaulted map[string][]*manifest.Manifest
	certs   map[string][2]string // client name -> cert, key
	// addr, when set, is a service the test started itself (serveProc).
	addr string
}

// roles used by every env: alice reads payments; the auditors group reads
// the audit trail; bob (a SPIFFE id) may only list "other".
const rolesYAML = `
  roles:
    - name: payments-responders
      verbs: [list, get, fetch]
      namespaces: [payments]
      subjects: [{user: alice}]
    - name: auditors
      verbs: [audit]
      namespaces: ["*"]
      subjects: [{group: auditors}]
    - name: other-listers
      verbs: [list]
      namespaces: [other]
      subjects: [{user: "spiffe://example.org/ns/ir/sa/bob"}]
`

type envOptions struct {
	backend     string
	perNS       int    // checkpoints per namespace (default 2)
	serveExtra  string // more serve: keys
	kubernetes  string // a serve.kubernetes: block (then roles are not added)
	noRoles     bool
	memoryBytes int64
	// noStart leaves the service to the test (e.g. the ckvault binary run
	// with cfgPath).
	noStart bool
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	if o.perNS == 0 {
		o.perNS = 2
	}
	dir := t.TempDir()
	sc := storeConfig(t, o.backend)
	st, err := storeconfig.Open(sc, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := testvault.NewKeys(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := testservers.NewCA(dir, "ckvault serve test CA")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.Issue(dir, "serve.crt", "serve.key")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, st: st, keys: keys, ca: ca, vaulted: map[string][]*manifest.Manifest{}, certs: map[string][2]string{}}
	for _, c := range []struct {
		name, cn, uri string
		orgs          []string
	}{
		{"alice", "alice", "", nil},
		{"bob", "bob-cn-ignored", "spiffe://example.org/ns/ir/sa/bob", nil},
		{"auditor", "carol", "", []string{"auditors"}},
		{"nobody", "nobody", "", nil},
	} {
		cf, kf, err := ca.IssueClient(dir, c.name, c.cn, c.uri, c.orgs...)
		if err != nil {
			t.Fatal(err)
		}
		e.certs[c.name] = [2]string{cf, kf}
	}
	other, err := testservers.NewCA(t.TempDir(), "another CA")
	if err != nil {
		t.Fatal(err)
	}
	cf, kf, err := other.IssueClient(dir, "stranger", "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	e.certs["stranger"] = [2]string{cf, kf}

	ctx := context.Background()
	seed := int64(1)
	for _, ns := range []string{"payments", "other"} {
		for i := range o.perNS {
			adir := filepath.Join(dir, "archives", ns, fmt.Sprint(i))
			os.MkdirAll(adir, 0o700)
			p, err := samplearchive.WriteDir(adir, samplearchive.Options{Namespace: ns, Pod: fmt.Sprintf("api-%d", i),
				Seed: seed, MemoryBytes: o.memoryBytes, CheckpointedAt: samplearchive.DefaultTime.Add(time.Duration(seed) * time.Minute)})
			seed++
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := testvault.Put(ctx, st, keys, p, "node-a")
			if err != nil {
				t.Fatal(err)
			}
			e.vaulted[ns] = append(e.vaulted[ns], m)
		}
	}

	storeYAML := "  url: " + sc.URL + "\n"
	if sc.CAFile != "" {
		storeYAML += fmt.Sprintf("  caFile: %s\n  pathStyle: path\n  accessKeyFile: %s\n  secretKeyFile: %s\n", sc.CAFile, sc.AccessKeyFile, sc.SecretKeyFile)
	}
	roles := rolesYAML
	if o.noRoles {
		roles = ""
	}
	yml := fmt.Sprintf(`node: serve-test
stateDir: %s
store:
%srecipients: [%s]
signing:
  key: %s
  publicKey: %s
audit:
  signEvery: 5
serve:
  listen: 127.0.0.1:0
  tlsCert: %s
  tlsKey: %s
  clientCA: %s
%s%s%s`, filepath.Join(dir, "state"), storeYAML, keys.Recipient, filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub"),
		certFile, keyFile, ca.CertFile, o.serveExtra, o.kubernetes, roles)
	cfg, err := policy.Parse([]byte(yml), "serve-test.yaml", dir)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, yml)
	}
	e.cfg = cfg
	e.cfgPath = filepath.Join(dir, "serve-test.yaml")
	if err := os.WriteFile(e.cfgPath, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	if !o.noStart {
		e.start(Setup{})
	}
	return e
}

func (e *env) start(su Setup) {
	e.t.Helper()
	su.Store, su.Trusted, su.Signer = e.st, e.keys.Trusted, e.keys.Signer
	srv, err := Start(context.Background(), e.cfg, su)
	if err != nil {
		e.t.Fatal(err)
	}
	e.srv = srv
	e.t.Cleanup(func() { srv.Shutdown() })
}

func (e *env) url() string {
	if e.addr != "" {
		return "https://" + e.addr
	}
	return "https://" + e.srv.Addr
}

// client is an HTTP client presenting the named certificate ("" for none).
func (e *env) client(name string) *http.Client {
	tc := &tls.Config{RootCAs: e.ca.Pool(), MinVersion: tls.VersionTLS12}
	if name != "" {
		c := e.certs[name]
		kp, err := tls.LoadX509KeyPair(c[0], c[1])
		if err != nil {
			e.t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 30 * time.Second}
}

// remote is the service client with the named certificate.
func (e *env) remote(name string) *remote.Store {
	c := e.certs[name]
	rs, err := remote.New(remote.Config{Server: e.url(), CAFile: e.ca.CertFile, CertFile: c[0], KeyFile: c[1]})
	if err != nil {
		e.t.Fatal(err)
	}
	return rs
}

type answer struct {
	code int
	body []byte
	hdr  http.Header
}

func (e *env) get(c *http.Client, path string, hdr ...string) answer {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.url()+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{code: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, b, resp.Header}
}

// records returns the service trail's records matching f.
func (e *env) records(f audit.Filter) []audit.Record {
	e.t.Helper()
	f.Limit = audit.MaxLimit
	p, err := e.srv.Trail.Query(context.Background(), f)
	if err != nil {
		e.t.Fatal(err)
	}
	return p.Records
}

func (e *env) list(c *http.Client, query string) (remote.CheckpointList, answer) {
	e.t.Helper()
	a := e.get(c, "/v1/checkpoints"+query)
	var l remote.CheckpointList
	if a.code == 200 {
		if err := json.Unmarshal(a.body, &l); err != nil {
			e.t.Fatalf("list answer: %v: %s", err, a.body)
		}
	}
	return l, a
}

func namespaces(l remote.CheckpointList) string {
	var ns []string
	for _, it := range l.Items {
		ns = append(ns, it.Namespace)
	}
	return strings.Join(ns, ",")
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildCkvault builds cmd/ckvault once per test binary and returns its
// path: tests that need the service as users run it start it as a child.
// CKVAULT_BENCH_BIN names a prebuilt binary instead (to profile the
// service with perf, which needs the binary after the run).
func buildCkvault(tb testing.TB) string {
	tb.Helper()
	if bin := os.Getenv("CKVAULT_BENCH_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ckvault-serve-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "ckvault")
		out, err := exec.Command("go", "build", "-o", builtBin, "github.com/checkpoint-vault/ckvault/cmd/ckvault").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building ckvault: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return builtBin
}

// serveProc is a `ckvault serve` child process.
type serveProc struct {
	cmd    *exec.Cmd
	addr   string
	log    string // its stderr
	line   string // its "listening on" line
	exited chan error
}

// startServe runs `ckvault serve --config cfgPath` and waits until it
// listens (after its first index refresh). The child is killed when the
// test ends unless stop was called.
func startServe(tb testing.TB, bin, cfgPath string, timeout time.Duration) *serveProc {
	tb.Helper()
	p := &serveProc{log: filepath.Join(tb.TempDir(), "serve.log"), exited: make(chan error, 1)}
	lf, err := os.Create(p.log)
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	p.cmd.Stderr = lf
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	lf.Close()
	tb.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			select {
			case lines <- s.Text():
			default:
			}
		}
		close(lines)
		p.exited <- p.cmd.Wait()
	}()
	select {
	case l, ok := <-lines:
		// "ckvault serve: listening on https://ADDR (N checkpoints indexed)"
		_, rest, found := strings.Cut(l, "listening on https://")
		if !ok || !found {
			b, _ := os.ReadFile(p.log)
			tb.Fatalf("ckvault serve did not start: %q\n%s", l, b)
		}
		p.addr, p.line = strings.Fields(rest)[0], l
	case <-time.After(timeout):
		b, _ := os.ReadFile(p.log)
		tb.Fatalf("ckvault serve did not listen within %s\n%s", timeout, b)
	}
	return p
}

// stop sends SIGTERM (the service exports and closes its trail) and waits.
func (p *serveProc) stop(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			b, _ := os.ReadFile(p.log)
			tb.Errorf("ckvault serve exited: %v\n%s", err, b)
		}
	case <-time.After(2 * time.Minute):
		tb.Fatal("ckvault serve did not stop within 2 minutes of SIGTERM")
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
