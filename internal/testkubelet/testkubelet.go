// Package testkubelet is a stand-in for the one kubelet endpoint
// checkpoint-vault calls, for tests: the kubelet itself cannot run on a
// machine without a container runtime and CRIU.
//
// It behaves as kubernetes' pkg/kubelet/server does, read from its source
// (server.go: the checkpoint handler and the auth filter; auth.go: the
// request attributes):
//
//   - POST /checkpoint/{podNamespace}/{podID}/{containerName}, only when
//     the ContainerCheckpoint feature gate is on; otherwise the route does
//     not exist and the answer is go-restful's 404 page;
//   - authentication by client certificate (verified against the client
//     CA) or by bearer token through a TokenReview against the real API
//     server (webhook authentication: no table of tokens, so expiry,
//     audience and revocation are the API server's), else 401
//     "Unauthorized"; authorisation of verb create on nodes/checkpoint of
//     this node through a SubjectAccessReview (webhook authorisation), else
//     403 "Forbidden (user=…, verb=create, resource=nodes, subresource=checkpoint)";
//   - 404 "pod does not exist", 404 "container X does not exist", 404
//     "cannot parse value of timeout parameter" (sic: the kubelet answers
//     404 to a bad timeout); the last timeout value wins;
//   - 500 "checkpointing of NS/POD/CTR failed (ERR)" when the runtime fails;
//   - 200 {"items":["<path>"]}, once the archive is written.
//
// The archive is written the way CRI-O and containerd write it: the final
// path opened O_RDWR|O_CREATE with mode 0600 (no temporary name, no
// truncation, no fsync), filled in pieces, closed — so that the real node
// daemon, watching the directory, sees it appear long before it is
// complete. Its name is the kubelet's,
// checkpoint-<pod>_<namespace>-<container>-<RFC 3339 time>.tar.
//
// Test-only code.
package testkubelet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
)

// User is an authenticated caller, as the kubelet's authenticator returns
// it and its authoriser sends it on in a SubjectAccessReview.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string]authzv1.ExtraValue
}

// authenticateToken is the kubelet's webhook token authenticator
// (--authentication-token-webhook, what kubeadm and every managed cluster
// configure): a TokenReview of the bearer token against the API server.
// The kubelet sets no audiences, so the API server checks the token
// against its own (--api-audiences, by default the service-account
// issuer): a token minted for another audience is refused, as a real
// kubelet refuses it.
func authenticateToken(ctx context.Context, api kubernetes.Interface, token string) (User, bool, error) {
	tr, err := api.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return User{}, false, err
	}
	if !tr.Status.Authenticated {
		return User{}, false, nil
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	return User{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra}, true, nil
}

// authorize is the kubelet's webhook authoriser (--authorization-mode
// Webhook): a SubjectAccessReview for verb create on resource nodes,
// subresource checkpoint, name node — so only RBAC decides, and
// nodes/proxy does not stand in for nodes/checkpoint.
func authorize(ctx context.Context, api kubernetes.Interface, u User, verb, node string) (bool, error) {
	sar, err := api.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Name, UID: u.UID, Groups: u.Groups, Extra: u.Extra,
			ResourceAttributes: &authzv1.ResourceAttributes{Verb: verb, Resource: "nodes", Subresource: "checkpoint", Name: node},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return sar.Status.Allowed, nil
}

// Options configure a Kubelet.
type Options struct {
	Node string
	// CheckpointsDir is where archives are written
	// (/var/lib/kubelet/checkpoints on a node).
	CheckpointsDir string
	// Pods maps "namespace/pod" to its container names.
	Pods map[string][]string
	// FeatureGateOff leaves the checkpoint route out.
	FeatureGateOff bool
	// API is the API server the kubelet delegates to: bearer tokens are
	// authenticated with a TokenReview and every request is authorised
	// with a SubjectAccessReview, as a kubelet with webhook authentication
	// and authorisation does. Required (internal/testkube runs a real one);
	// the identity needs create on tokenreviews and subjectaccessreviews.
	API kubernetes.Interface
	// RuntimeRequestTimeout is the kubelet's --runtime-request-timeout
	// (default 2m): the runtime gets at least this long, whatever timeout
	// the request asks for.
	RuntimeRequestTimeout time.Duration
	// Archive gives the sample archive written for a checkpoint (default:
	// a CRI-O archive of the target).
	Archive func(ns, pod, ctr string) samplearchive.Options
}

// Kubelet is a running stand-in.
type Kubelet struct {
	// URL is https://127.0.0.1:PORT.
	URL  string
	Node string
	// CA signed the serving certificate; CAFile is its PEM file (what a
	// client passes as --kubelet-ca).
	CA     *testservers.CA
	CAFile string

	opts      Options
	clientCA  *x509.Certificate
	clientKey *ecdsa.PrivateKey
	mu        sync.Mutex
	// Runtime behaviour, settable between requests.
	fail        string        // non-empty: the runtime fails with this message
	delay       time.Duration // the runtime takes this long before writing
	chunk       int           // write size (default 64 KiB)
	chunkPause  time.Duration // pause between writes
	requests    []Request
	lastWritten string
}

// Request is what the stand-in received, for assertions.
type Request struct {
	User          string
	Path, Timeout string
	Status        int
}

// Start runs a stand-in until the test ends.
func Start(tb testing.TB, opts Options) *Kubelet {
	tb.Helper()
	if opts.API == nil {
		tb.Fatal("testkubelet: Options.API is nil; give it a client of the test API server (internal/testkube), which authenticates and authorises for the kubelet")
	}
	dir := tb.TempDir()
	ca, err := testservers.NewCA(dir, "testkubelet")
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := ca.Leaf()
	if err != nil {
		tb.Fatal(err)
	}
	cc, ck, err := newClientCA()
	if err != nil {
		tb.Fatal(err)
	}
	clientPool := x509.NewCertPool()
	clientPool.AddCert(cc)
	k := &Kubelet{Node: opts.Node, CA: ca, CAFile: ca.CertFile, opts: opts, chunk: 64 << 10, clientCA: cc, clientKey: ck}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(k.serve))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: clientPool, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	tb.Cleanup(srv.Close)
	k.URL = srv.URL
	return k
}

// FailWith makes the runtime fail every checkpoint with msg ("" clears).
func (k *Kubelet) FailWith(msg string) { k.mu.Lock(); k.fail = msg; k.mu.Unlock() }

// SlowRuntime makes the runtime wait delay before writing, then write in
// pieces of chunk bytes with pause between them.
func (k *Kubelet) SlowRuntime(delay time.Duration, chunk int, pause time.Duration) {
	k.mu.Lock()
	k.delay, k.chunk, k.chunkPause = delay, chunk, pause
	k.mu.Unlock()
}

// Requests returns what was received so far.
func (k *Kubelet) Requests() []Request {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]Request(nil), k.requests...)
}

// LastArchive is the path of the last archive written.
func (k *Kubelet) LastArchive() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastWritten
}

func (k *Kubelet) serve(w http.ResponseWriter, r *http.Request) {
	rec := Request{Path: r.URL.Path, Timeout: r.URL.RawQuery}
	status := k.handle(w, r, &rec)
	rec.Status = status
	k.mu.Lock()
	k.requests = append(k.requests, rec)
	k.mu.Unlock()
}

// writeError is go-restful's Response.WriteErrorString, which the kubelet
// uses for every error: the status, then the message as the body.
func writeError(w http.ResponseWriter, status int, msg string) int {
	w.WriteHeader(status)
	w.Write([]byte(msg))
	return status
}

func (k *Kubelet) handle(w http.ResponseWriter, r *http.Request, rec *Request) int {
	// The auth filter runs before routing, for every path. An error of
	// the authenticator is a 401 as well (server.go logs it and answers
	// "Unauthorized").
	u, ok, err := k.authenticate(r)
	if err != nil || !ok {
		return writeError(w, http.StatusUnauthorized, "Unauthorized")
	}
	rec.User = u.Name
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(parts) == 0 || parts[0] != "checkpoint" {
		return writeError(w, http.StatusNotFound, "404 page not found")
	}
	// auth.go: the verb comes from the method (POST → create), the
	// subresource from the path's first segment.
	verb := map[string]string{http.MethodPost: "create", http.MethodGet: "get", http.MethodPut: "update", http.MethodDelete: "delete"}[r.Method]
	allowed, err := authorize(r.Context(), k.opts.API, u, verb, k.Node)
	if err != nil {
		return writeError(w, http.StatusInternalServerError, fmt.Sprintf("Authorization error (user=%s, verb=%s, resource=%s, subresource=%s)", u.Name, verb, "nodes", "checkpoint"))
	}
	if !allowed {
		return writeError(w, http.StatusForbidden, fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=%s, subresource=%s)", u.Name, verb, "nodes", "checkpoint"))
	}
	if k.opts.FeatureGateOff || len(parts) != 4 || r.Method != http.MethodPost {
		// No such route: go-restful's answer.
		return writeError(w, http.StatusNotFound, "404 page not found")
	}
	ns, pod, ctr := parts[1], parts[2], parts[3]
	ctrs, ok := k.opts.Pods[ns+"/"+pod]
	if !ok {
		return writeError(w, http.StatusNotFound, "pod does not exist")
	}
	found := false
	for _, c := range ctrs {
		found = found || c == ctr
	}
	if !found {
		return writeError(w, http.StatusNotFound, fmt.Sprintf("container %v does not exist", ctr))
	}
	var timeout time.Duration
	if ts := r.URL.Query()["timeout"]; len(ts) > 0 {
		n, err := strconv.ParseInt(ts[len(ts)-1], 10, 64)
		if err != nil {
			return writeError(w, http.StatusNotFound, "cannot parse value of timeout parameter")
		}
		timeout = time.Duration(n) * time.Second
	}
	p, err := k.runtimeCheckpoint(r.Context(), ns, pod, ctr, timeout)
	if err != nil {
		return writeError(w, http.StatusInternalServerError, fmt.Sprintf("checkpointing of %v/%v/%v failed (%v)", ns, pod, ctr, err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "{\"items\":[\"%s\"]}", p)
	return http.StatusOK
}

// authenticate is the kubelet's union authenticator: a client certificate
// verified against its client CA first, then a bearer token through the
// API server.
func (k *Kubelet) authenticate(r *http.Request) (User, bool, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		c := r.TLS.PeerCertificates[0]
		return User{Name: c.Subject.CommonName, Groups: c.Subject.Organization}, true, nil
	}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && tok != "" {
		return authenticateToken(r.Context(), k.opts.API, tok)
	}
	return User{}, false, nil
}

// runtimeCheckpoint is the container runtime's part: it writes the archive
// in place, within the longer of timeout and the runtime request timeout
// (as the kubelet's CRI client does).
func (k *Kubelet) runtimeCheckpoint(ctx context.Context, ns, pod, ctr string, timeout time.Duration) (string, error) {
	k.mu.Lock()
	fail, delay, chunk, pause := k.fail, k.delay, k.chunk, k.chunkPause
	k.mu.Unlock()
	rrt := k.opts.RuntimeRequestTimeout
	if rrt == 0 {
		rrt = 2 * time.Minute
	}
	timeout = max(timeout, rrt)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if fail != "" {
		return "", fmt.Errorf("rpc error: code = Unknown desc = %s", fail)
	}
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return "", fmt.Errorf("rpc error: code = DeadlineExceeded desc = context deadline exceeded")
	}
	o := samplearchive.Options{Engine: samplearchive.CRIO, Namespace: ns, Pod: pod, Container: ctr, MemoryBytes: 2 << 20}
	if k.opts.Archive != nil {
		o = k.opts.Archive(ns, pod, ctr)
	}
	now := time.Now().UTC().Truncate(time.Second)
	o.CheckpointedAt = now
	var buf bytes.Buffer
	if err := samplearchive.Write(&buf, o); err != nil {
		return "", err
	}
	p := filepath.Join(k.opts.CheckpointsDir, fmt.Sprintf("checkpoint-%s_%s-%s-%s.tar", pod, ns, ctr, now.Format(time.RFC3339)))
	// As CRI-O and containerd do: the final name, in place.
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	b := buf.Bytes()
	for len(b) > 0 {
		n := min(chunk, len(b))
		if _, err := f.Write(b[:n]); err != nil {
			f.Close()
			return "", err
		}
		b = b[n:]
		if pause > 0 && len(b) > 0 {
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				f.Close() // a failed write leaves the partial file behind, as the runtimes do
				return "", fmt.Errorf("rpc error: code = DeadlineExceeded desc = context deadline exceeded")
			}
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	k.mu.Lock()
	k.lastWritten = p
	k.mu.Unlock()
	return p, nil
}

// ClientCert issues a client certificate for user (CN), signed by the
// kubelet's client CA, as PEM files in dir (the key 0600).
func (k *Kubelet) ClientCert(tb testing.TB, dir, user string) (certFile, keyFile string) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: user},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, k.clientCA, &key.PublicKey, k.clientKey)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, user+".crt"), filepath.Join(dir, user+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

// newClientCA makes the kubelet's client CA (--client-ca-file), distinct
// from the CA of its serving certificate, as on real nodes.
func newClientCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "testkubelet client CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}
