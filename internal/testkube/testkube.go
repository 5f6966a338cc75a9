// Package testkube starts a real Kubernetes API server for tests: etcd and
// kube-apiserver (the envtest pair: no kubelet, no controllers), both on
// random loopback ports, with RBAC authorisation, service-account token
// signing and a static admin token. That is enough for TokenReview,
// SubjectAccessReview, ServiceAccounts, TokenRequest, Roles and RoleBindings.
//
// The binaries are built by scripts/install-test-tools.sh from the modules
// under tools/ (the product does not depend on k8s.io/kubernetes) and found
// with internal/testtools: a missing binary skips the test locally and fails
// it in CI (CKVAULT_REQUIRE_TOOLS=1 or CI set).
//
// Starting a cluster takes about five seconds and 350 MB, so a test package
// normally shares one:
//
//	func TestMain(m *testing.M) { os.Exit(testkube.Main(m)) }
//
//	func TestX(t *testing.T) {
//		c := testkube.Shared(t)
//		ns := c.Namespace(t)                       // a fresh namespace
//		c.ServiceAccount(t, ns, "alice")
//		tok := c.Token(t, ns, "alice", "vault", time.Hour)
//		kub := c.Token(t, ns, "alice", testkube.APIAudience, time.Hour) // for the API server or a kubelet
//		old := c.ExpiredToken(t, ns, "alice", testkube.APIAudience)     // expired a minute ago
//		c.Grant(t, ns, "reader", []rbacv1.PolicyRule{...}, testkube.SA(ns, "alice"))
//		cs := c.Client(t)                          // admin kubernetes.Interface
//		cfg := c.RestConfig()                      // admin *rest.Config
//		path := c.Kubeconfig                       // admin kubeconfig file
//	}
package testkube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
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

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

// APIAudience is the API server's own audience (its service-account
// issuer): what a token needs for the API server itself and for a kubelet,
// whose webhook authenticator sends TokenReviews without audiences.
const APIAudience = "https://kubernetes.default.svc"

// Cluster is one running etcd + kube-apiserver pair.
type Cluster struct {
	// URL is the API server, https://127.0.0.1:PORT.
	URL string
	// CAFile is the PEM CA that signed the API server's certificate; CA can
	// issue more certificates (for a test's own servers and clients).
	CAFile string
	CA     *testservers.CA
	// AdminToken is a static bearer token of a member of system:masters.
	AdminToken string
	// Kubeconfig is a kubeconfig file for the admin (URL, CA, AdminToken).
	Kubeconfig string
	// Dir holds the cluster's files; tests may put their own files there.
	Dir string

	etcd, apiserver *proc
	mu              sync.Mutex
	nsCount         int
}

type proc struct {
	name    string
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile string
}

func (p *proc) stop() {
	if p == nil || p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.logFile)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return strings.TrimSpace(string(b))
}

// New starts a cluster for this test alone; it is stopped when the test
// ends.
func New(tb testing.TB) *Cluster {
	tb.Helper()
	etcdBin, apiBin := testtools.Path(tb, "etcd"), testtools.Path(tb, "kube-apiserver")
	c, err := start(etcdBin, apiBin)
	if err != nil {
		tb.Fatalf("start kube-apiserver: %v", err)
	}
	tb.Cleanup(c.Stop)
	return c
}

var shared struct {
	sync.Mutex
	c   *Cluster
	err error
}

// Shared returns the package-wide cluster, starting it on first use. Main
// stops it when the package's tests end; without Main it dies with the test
// binary (the children get a parent-death signal). Tests sharing it should
// work in namespaces of their own (Namespace).
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	etcdBin, apiBin := testtools.Path(tb, "etcd"), testtools.Path(tb, "kube-apiserver")
	shared.Lock()
	defer shared.Unlock()
	if shared.c != nil {
		return shared.c
	}
	if shared.err != nil {
		tb.Fatalf("start kube-apiserver: %v (failed earlier in this package)", shared.err)
	}
	shared.c, shared.err = start(etcdBin, apiBin)
	if shared.err != nil {
		tb.Fatalf("start kube-apiserver: %v", shared.err)
	}
	return shared.c
}

// Main runs the package's tests, then stops the shared cluster. Use it from
// TestMain (it composes with testservers.Main: call one inside the other's
// run function, or stop both here).
func Main(m *testing.M) int {
	code := m.Run()
	StopShared()
	return code
}

// StopShared stops the shared cluster, if one was started (for a TestMain
// that runs its tests through another package's Main).
func StopShared() {
	shared.Lock()
	defer shared.Unlock()
	if shared.c != nil {
		shared.c.Stop()
		shared.c = nil
	}
}

// Stop stops the API server, then etcd (in that order: the API server
// retries a vanished etcd for a long time), and removes the cluster's files.
func (c *Cluster) Stop() {
	c.apiserver.stop()
	c.etcd.stop()
	os.RemoveAll(c.Dir)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start(etcdBin, apiBin string) (*Cluster, error) {
	dir, err := os.MkdirTemp("", "ckvault-kube-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, AdminToken: randomHex(24)}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()
	if c.CA, err = testservers.NewCA(dir, "ckvault test kube-apiserver CA"); err != nil {
		return nil, err
	}
	c.CAFile = c.CA.CertFile
	certFile, keyFile, err := c.CA.Issue(dir, "apiserver.crt", "apiserver.key")
	if err != nil {
		return nil, err
	}
	saPub, saKey, err := writeSAKeys(dir)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(c.AdminToken+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return nil, err
	}

	var lastErr error
	var etcdURL string
	for range 3 {
		cport, err1 := freePort()
		pport, err2 := freePort()
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("no free port: %v %v", err1, err2)
		}
		etcdURL = fmt.Sprintf("http://127.0.0.1:%d", cport)
		peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
		c.etcd, lastErr = launch("etcd", etcdBin, dir, []string{
			"--name", "default", "--data-dir", filepath.Join(dir, "etcd"),
			"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", "default=" + peer,
			// Tests do not need durability across a power cut; fsync
			// per write costs the API server seconds at start-up.
			"--unsafe-no-fsync", "--log-level", "warn",
		})
		if lastErr != nil {
			continue
		}
		if lastErr = waitHTTP(c.etcd, etcdURL+"/health", nil, 30*time.Second); lastErr == nil {
			break
		}
		c.etcd.stop()
	}
	if lastErr != nil {
		return nil, lastErr
	}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool()}}}
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		c.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
		c.apiserver, lastErr = launch("kube-apiserver", apiBin, dir, []string{
			"--etcd-servers=" + etcdURL,
			"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
			"--tls-cert-file=" + certFile, "--tls-private-key-file=" + keyFile,
			fmt.Sprintf("--secure-port=%d", port),
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			// Required with a loopback advertise address.
			"--endpoint-reconciler-type=none",
			"--service-account-issuer=" + APIAudience,
			"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
			"--authorization-mode=RBAC", "--token-auth-file=" + tokens,
			"--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
			// No controller manager creates the default ServiceAccount
			// that this admission plugin insists on.
			"--disable-admission-plugins=ServiceAccount",
		})
		if lastErr != nil {
			continue
		}
		hdr := http.Header{"Authorization": {"Bearer " + c.AdminToken}}
		if lastErr = waitHTTP(c.apiserver, c.URL+"/readyz", func(r *http.Request) { r.Header = hdr.Clone() }, 90*time.Second, client); lastErr == nil {
			break
		}
		c.apiserver.stop()
	}
	if lastErr != nil {
		return nil, lastErr
	}
	c.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := c.WriteKubeconfig(c.Kubeconfig, c.AdminToken); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// writeSAKeys makes the key pair the API server signs service-account
// tokens with (ES256).
func writeSAKeys(dir string) (pub, priv string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pder, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	priv, pub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}), 0o600); err != nil {
		return "", "", err
	}
	return pub, priv, nil
}

func launch(name, bin, dir string, args []string) (*proc, error) {
	logFile := filepath.Join(dir, name+".log")
	log, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{}), logFile: logFile}
	go func() { cmd.Wait(); log.Close(); close(p.exited) }()
	return p, nil
}

// waitHTTP polls url until it answers 200, the process exits, or timeout.
func waitHTTP(p *proc, url string, prep func(*http.Request), timeout time.Duration, client ...*http.Client) error {
	hc := http.DefaultClient
	if len(client) > 0 {
		hc = client[0]
	}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if prep != nil {
			prep(req)
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during start-up: %s", p.name, p.tail())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %s (%s); log: %s", p.name, url, timeout, last, p.tail())
		}
	}
}

// Log returns the end of the API server's log, for failure messages.
func (c *Cluster) Log() string { return c.apiserver.tail() }

// RestConfig returns an admin client configuration.
func (c *Cluster) RestConfig() *rest.Config {
	return c.RestConfigFor(c.AdminToken)
}

// RestConfigFor returns a client configuration that authenticates with
// token (for example a service account's, to act as that account).
func (c *Cluster) RestConfigFor(token string) *rest.Config {
	return &rest.Config{
		Host:            c.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile},
		QPS:             -1, // no client-side throttling in tests
	}
}

// WriteKubeconfig writes a kubeconfig file that reaches this cluster with
// token.
func (c *Cluster) WriteKubeconfig(path, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthority: c.CAFile}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "user"}
	cfg.CurrentContext = "test"
	return clientcmd.WriteToFile(*cfg, path)
}

// Client returns an admin clientset.
func (c *Cluster) Client(tb testing.TB) kubernetes.Interface {
	tb.Helper()
	cs, err := kubernetes.NewForConfig(c.RestConfig())
	if err != nil {
		tb.Fatal(err)
	}
	return cs
}

func ctx(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// Namespace creates a namespace with a fresh name and returns the name.
func (c *Cluster) Namespace(tb testing.TB) string {
	tb.Helper()
	c.mu.Lock()
	c.nsCount++
	name := fmt.Sprintf("t%d-%s", c.nsCount, randomHex(3))
	c.mu.Unlock()
	c.CreateNamespace(tb, name)
	return name
}

// CreateNamespace creates the namespace name (it may already exist).
func (c *Cluster) CreateNamespace(tb testing.TB, name string) {
	tb.Helper()
	_, err := c.Client(tb).CoreV1().Namespaces().Create(ctx(tb),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		tb.Fatalf("create namespace %s: %v", name, err)
	}
}

// ServiceAccount creates the service account ns/name.
func (c *Cluster) ServiceAccount(tb testing.TB, ns, name string) {
	tb.Helper()
	_, err := c.Client(tb).CoreV1().ServiceAccounts(ns).Create(ctx(tb),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create service account %s/%s: %v", ns, name, err)
	}
}

// Token returns a bound token of the service account ns/name for audience
// (TokenRequest, what `kubectl create token --audience` does). ttl is
// rounded up by the API server to its minimum of ten minutes.
func (c *Cluster) Token(tb testing.TB, ns, name, audience string, ttl time.Duration) string {
	tb.Helper()
	secs := int64(ttl / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: &secs,
	}}
	resp, err := c.Client(tb).CoreV1().ServiceAccounts(ns).CreateToken(ctx(tb), name, req, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("token for %s/%s (audience %s): %v", ns, name, audience, err)
	}
	return resp.Status.Token
}

// ExpiredToken returns a token of the service account ns/name for audience
// that expired a minute ago. The API server will not issue one (its minimum
// lifetime is ten minutes), so this takes a token it issued and re-signs
// it with the cluster's service-account signing key after moving its
// times into the past: every other claim, and the header (kid), are the
// API server's own. Resign with the times unchanged authenticates, which
// shows that expiry is the only defect of an ExpiredToken.
func (c *Cluster) ExpiredToken(tb testing.TB, ns, name, audience string) string {
	tb.Helper()
	now := time.Now().Unix()
	return c.Resign(tb, c.Token(tb, ns, name, audience, time.Hour), func(claims map[string]any) {
		claims["iat"], claims["nbf"], claims["exp"] = now-3600, now-3600, now-60
	})
}

// Resign decodes a token the API server issued, lets edit change its
// claims, and signs it again with the cluster's service-account key (ES256).
func (c *Cluster) Resign(tb testing.TB, token string, edit func(claims map[string]any)) string {
	tb.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		tb.Fatalf("token is not a JWS in compact form (%d parts)", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		tb.Fatalf("token payload: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	claims := map[string]any{}
	if err := dec.Decode(&claims); err != nil {
		tb.Fatalf("token claims: %v", err)
	}
	if edit != nil {
		edit(claims)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	pemBytes, err := os.ReadFile(filepath.Join(c.Dir, "sa.key"))
	if err != nil {
		tb.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		tb.Fatalf("%s holds no PEM block", filepath.Join(c.Dir, "sa.key"))
	}
	key, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	signed := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		tb.Fatal(err)
	}
	// JWS ES256: R and S, each as 32 big-endian bytes (RFC 7518 §3.4).
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// AuthDelegator is what a service that delegates authentication and
// authorisation to the API server needs (the rules of the built-in
// system:auth-delegator ClusterRole, which deploy/ grants `ckvault serve`
// as its own ClusterRole ckvault-service).
var AuthDelegator = []rbacv1.PolicyRule{
	{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
	{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
}

// SA is the RBAC subject for service account ns/name.
func SA(ns, name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}
}

// User is the RBAC subject for a user name (for example the identity a
// client certificate maps to, when the service asks on its behalf).
func User(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: name}
}

// Group is the RBAC subject for a group name.
func Group(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: name}
}

// Grant creates Role ns/role with rules and binds it to subjects (a
// RoleBinding of the same name).
func (c *Cluster) Grant(tb testing.TB, ns, role string, rules []rbacv1.PolicyRule, subjects ...rbacv1.Subject) {
	tb.Helper()
	cs := c.Client(tb)
	_, err := cs.RbacV1().Roles(ns).Create(ctx(tb),
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create role %s/%s: %v", ns, role, err)
	}
	_, err = cs.RbacV1().RoleBindings(ns).Create(ctx(tb), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role},
		Subjects:   subjects,
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create role binding %s/%s: %v", ns, role, err)
	}
	c.waitGranted(tb, ns, rules, subjects)
}

// GrantCluster creates ClusterRole role with rules and a ClusterRoleBinding
// of the same name to subjects (for example what `ckvault serve` needs to
// create TokenReviews and SubjectAccessReviews).
func (c *Cluster) GrantCluster(tb testing.TB, role string, rules []rbacv1.PolicyRule, subjects ...rbacv1.Subject) {
	tb.Helper()
	cs := c.Client(tb)
	_, err := cs.RbacV1().ClusterRoles().Create(ctx(tb),
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create cluster role %s: %v", role, err)
	}
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx(tb), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   subjects,
	}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create cluster role binding %s: %v", role, err)
	}
	c.waitGranted(tb, "", rules, subjects)
}

// waitGranted returns once the API server's RBAC authoriser, which learns
// of new bindings through an informer a moment later, allows every subject
// the first rule: a test's first request must not race the grant (nor a
// service cache its denial).
func (c *Cluster) waitGranted(tb testing.TB, ns string, rules []rbacv1.PolicyRule, subjects []rbacv1.Subject) {
	tb.Helper()
	if len(rules) == 0 || len(rules[0].Resources) == 0 || len(rules[0].Verbs) == 0 || len(rules[0].APIGroups) == 0 {
		return // non-resource rules: nothing to probe with
	}
	r := rules[0]
	pick := func(v, wildcard string) string {
		if v == "*" {
			return wildcard
		}
		return v
	}
	resource, sub, _ := strings.Cut(pick(r.Resources[0], "probes"), "/")
	attrs := &authorizationv1.ResourceAttributes{Namespace: ns, Verb: pick(r.Verbs[0], "get"),
		Group: pick(r.APIGroups[0], ""), Resource: resource, Subresource: sub}
	cs := c.Client(tb)
	for _, s := range subjects {
		spec := authorizationv1.SubjectAccessReviewSpec{ResourceAttributes: attrs}
		switch s.Kind {
		case rbacv1.UserKind:
			spec.User = s.Name
		case rbacv1.GroupKind:
			spec.User, spec.Groups = "testkube-probe", []string{s.Name}
		case rbacv1.ServiceAccountKind:
			spec.User = "system:serviceaccount:" + s.Namespace + ":" + s.Name
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx(tb),
				&authorizationv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
			if err != nil {
				tb.Fatalf("checking the grant to %s %s: %v", s.Kind, s.Name, err)
			}
			if r.Status.Allowed {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("the grant to %s %s of %+v is not in effect after 30s", s.Kind, s.Name, *attrs)
			}
		}
	}
}
