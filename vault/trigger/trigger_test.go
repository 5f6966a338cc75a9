package trigger_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/audit/auditsock"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/internal/testkubelet"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/daemon"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
	"github.com/checkpoint-vault/ckvault/vault/trigger"
)

// node is one test node: the real daemon watching a checkpoints directory
// that the kubelet stand-in writes into, and a responder's view of the
// vault with the daemon's audit trail reached through its socket.
type node struct {
	cfg     *policy.Config
	kubelet *testkubelet.Kubelet
	trail   *auditsock.Client
	r       *responder.Responder
	finder  *trigger.StoreFinder
	ids     []age.Identity
	dir     string
}

func TestMain(m *testing.M) { os.Exit(testkube.Main(m)) }

// The identities of the tests, real service accounts of the shared test
// API server (set by kube): bearer tokens the kubelet stand-in
// authenticates with a TokenReview and authorises with a
// SubjectAccessReview, as a kubelet does.
var (
	kubeOnce   sync.Once
	kubeAPI    kubernetes.Interface // the kubelet's own client: system:auth-delegator only
	kubeNS     string
	tokAlice   string // ir/alice: create on nodes/checkpoint
	tokMallory string // ir/mallory: nodes/proxy, not nodes/checkpoint
)

// kube starts (once) the shared API server and makes the service accounts:
// alice bound to create on nodes/checkpoint (and the user alice, for
// client certificates), mallory to everything on
// nodes/proxy (which must not be enough), and the kubelet's own account
// with system:auth-delegator (create tokenreviews and
// subjectaccessreviews, what a kubelet's node identity may do).
func kube(t *testing.T) *testkube.Cluster {
	t.Helper()
	c := testkube.Shared(t)
	kubeOnce.Do(func() {
		kubeNS = c.Namespace(t)
		for _, sa := range []string{"alice", "mallory", "kubelet"} {
			c.ServiceAccount(t, kubeNS, sa)
		}
		c.GrantCluster(t, kubeNS+"-checkpoint", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/checkpoint"}, Verbs: []string{"create"}}},
			testkube.SA(kubeNS, "alice"), testkube.User("alice"))
		c.GrantCluster(t, kubeNS+"-node-proxy", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"*"}}},
			testkube.SA(kubeNS, "mallory"))
		bindClusterRole(t, c, kubeNS+"-kubelet-auth", "system:auth-delegator", testkube.SA(kubeNS, "kubelet"))
		tokAlice = c.Token(t, kubeNS, "alice", testkube.APIAudience, time.Hour)
		tokMallory = c.Token(t, kubeNS, "mallory", testkube.APIAudience, time.Hour)
		cs, err := kubernetes.NewForConfig(c.RestConfigFor(c.Token(t, kubeNS, "kubelet", testkube.APIAudience, time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		kubeAPI = cs
	})
	if kubeAPI == nil {
		t.Fatal("setting up the test service accounts failed in an earlier test")
	}
	return c
}

// bindClusterRole binds an existing cluster role to subjects.
func bindClusterRole(t *testing.T, c *testkube.Cluster, name, role string, subjects ...rbacv1.Subject) {
	t.Helper()
	_, err := c.Client(t).RbacV1().ClusterRoleBindings().Create(context.Background(), &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		Subjects:   subjects,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("bind %s to %s: %v", role, name, err)
	}
}

func newNode(t *testing.T, kopts testkubelet.Options) *node {
	t.Helper()
	dir := t.TempDir()
	keys, err := testvault.NewKeys(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	ck, state, st := filepath.Join(dir, "checkpoints"), filepath.Join(dir, "state"), filepath.Join(dir, "store")
	for _, d := range []string{ck, st} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	y := fmt.Sprintf(`node: node-a
checkpointsDir: %s
stateDir: %s
store:
  url: file://%s
recipients: [%s]
namespaces:
  kube-system: {skip: true}
signing:
  key: %s
  publicKey: %s
daemon:
  workers: 2
  listen: 127.0.0.1:0
  owner: any
  rescanInterval: 30s
audit:
  exportInterval: 1h
`, ck, state, st, keys.Recipient, filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub"))
	cfgPath := filepath.Join(dir, "ckvault.yaml")
	if err := os.WriteFile(cfgPath, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PollInterval: 50 * time.Millisecond})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-errc })
	select {
	case <-d.Ready():
	case err := <-errc:
		t.Fatalf("daemon: %v", err)
	}
	store, err := storeconfig.Open(cfg.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	trail := auditsock.Dial(filepath.Join(state, auditsock.SocketName))
	t.Cleanup(func() { trail.Close() })
	r := &responder.Responder{Store: store, Trusted: keys.Trusted, Audit: trail, Actor: "uid:0(test)@laptop"}

	return &node{cfg: cfg, kubelet: startKubelet(t, ck, kopts), trail: trail, r: r,
		finder: &trigger.StoreFinder{Store: store, Responder: r}, ids: []age.Identity{keys.Identity}, dir: dir}
}

// startKubelet runs a stand-in for node-a writing into ck, with the test
// pods unless opts sets them, delegating authentication and authorisation
// to the shared API server.
func startKubelet(t *testing.T, ck string, kopts testkubelet.Options) *testkubelet.Kubelet {
	kube(t)
	kopts.Node, kopts.CheckpointsDir, kopts.API = "node-a", ck, kubeAPI
	if kopts.Pods == nil {
		kopts.Pods = map[string][]string{"payments/api-0": {"server", "sidecar"}, "kube-system/dns-0": {"coredns"}}
	}
	return testkubelet.Start(t, kopts)
}

func client(t *testing.T, k *testkubelet.Kubelet, token string) *trigger.Kubelet {
	u, err := url.Parse(k.URL)
	if err != nil {
		t.Fatal(err)
	}
	return &trigger.Kubelet{URL: u, Node: "node-a", Token: token,
		TLS: &tls.Config{RootCAs: k.CA.Pool(), MinVersion: tls.VersionTLS12}, Backoff: 10 * time.Millisecond}
}

func (n *node) client(t *testing.T, token string) *trigger.Kubelet {
	return client(t, n.kubelet, token)
}

func (n *node) trigger(t *testing.T, k *trigger.Kubelet) *trigger.Trigger {
	return &trigger.Trigger{Kubelet: k, Timeout: 30 * time.Second, Audit: n.trail, Actor: "uid:0(test)@laptop",
		LockDir: filepath.Join(n.dir, "locks"),
		Wait:    trigger.WaitOptions{Finder: n.finder, Trail: n.trail, Interval: 100 * time.Millisecond, DetectWithin: 20 * time.Second, VaultWithin: time.Minute}}
}

var api = trigger.Target{Namespace: "payments", Pod: "api-0", Container: "server"}

// TestTriggerVaults: a 200 with the archive written in place — fast, and
// slowly in small pieces — ends with a vault id whose fetch is the archive
// the runtime wrote, and the audit trail reads request → answer → the
// daemon's proof → vaulted.
func TestTriggerVaults(t *testing.T) {
	n := newNode(t, testkubelet.Options{})
	for _, tc := range []struct {
		name  string
		chunk int
		pause time.Duration
	}{
		{"fast", 1 << 20, 0},
		{"slow in-place write", 64 << 10, 40 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.kubelet.SlowRuntime(0, tc.chunk, tc.pause)
			time.Sleep(1100 * time.Millisecond) // a new second: a new archive name
			res, err := n.trigger(t, n.client(t, tokAlice)).Run(context.Background(), api)
			if err != nil {
				t.Fatal(err)
			}
			if res.Archive != n.kubelet.LastArchive() || res.ID == "" || res.Node != "node-a" || !strings.HasPrefix(res.Object, "payments/api-0/server/") {
				t.Fatalf("result %+v, kubelet wrote %s", res, n.kubelet.LastArchive())
			}
			// The vault id fetches back the bytes the runtime wrote.
			fn, err := checkpoint.ParseFilename(path.Base(res.Archive))
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			if err := samplearchive.Write(&want, samplearchive.Options{Engine: samplearchive.CRIO, Namespace: api.Namespace, Pod: api.Pod,
				Container: api.Container, MemoryBytes: 2 << 20, CheckpointedAt: fn.Time}); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "out.tar")
			if _, err := n.r.Fetch(context.Background(), res.ID, out, responder.FetchOptions{Identities: n.ids}); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("fetched %d bytes, the runtime wrote %d different ones", len(got), want.Len())
			}
			// The trail: request, answer, the daemon's proof, vaulted.
			page, err := n.trail.Query(context.Background(), audit.Filter{Since: res.Requested.Add(-time.Second), Limit: 1000})
			if err != nil {
				t.Fatal(err)
			}
			order := map[string]uint64{}
			for _, r := range page.Records {
				if r.Subject == path.Base(res.Archive) || r.Subject == api.String() {
					if _, ok := order[r.Action]; !ok {
						order[r.Action] = r.Seq
					}
				}
			}
			seq := func(a string) uint64 {
				s, ok := order[a]
				if !ok {
					t.Fatalf("no %q record for %s in the trail: %v", a, res.Archive, order)
				}
				return s
			}
			if !(seq(trigger.ActionRequested) < seq(trigger.ActionAnswered) && seq(trigger.ActionAnswered) < seq("proven") && seq("proven") < seq(trigger.ActionVaulted)) {
				t.Errorf("trail order %v, want requested < answered < proven < vaulted", order)
			}
			for _, r := range page.Records {
				if r.Action == trigger.ActionVaulted && r.Subject == path.Base(res.Archive) && r.Detail["id"] != res.ID {
					t.Errorf("vaulted record %+v does not name id %s", r, res.ID)
				}
			}
		})
	}
}

// TestKubeletAnswers: every error answer of the kubelet maps to its error,
// is recorded, and nothing is waited for.
func TestKubeletAnswers(t *testing.T) {
	n := newNode(t, testkubelet.Options{RuntimeRequestTimeout: time.Second})
	off := startKubelet(t, t.TempDir(), testkubelet.Options{FeatureGateOff: true})
	for _, tc := range []struct {
		name   string
		k      *trigger.Kubelet
		target trigger.Target
		setup  func()
		want   error
		says   string
	}{
		{"401 unknown token", n.client(t, "no-such-token"), api, nil, trigger.ErrUnauthorized, "--token-file"},
		{"401 expired token", n.client(t, kube(t).ExpiredToken(t, kubeNS, "alice", testkube.APIAudience)), api, nil, trigger.ErrUnauthorized, "--token-file"},
		{"401 token for another audience", n.client(t, kube(t).Token(t, kubeNS, "alice", "vault", time.Hour)), api, nil, trigger.ErrUnauthorized, "--token-file"},
		{"401 no credentials", n.client(t, ""), api, nil, trigger.ErrUnauthorized, "client certificate"},
		{"403", n.client(t, tokMallory), api, nil, trigger.ErrForbidden, "create on nodes/checkpoint"},
		{"404 pod", n.client(t, tokAlice), trigger.Target{Namespace: "payments", Pod: "gone-0", Container: "server"}, nil, trigger.ErrNotFound, "pod does not exist"},
		{"404 container", n.client(t, tokAlice), trigger.Target{Namespace: "payments", Pod: "api-0", Container: "nope"}, nil, trigger.ErrNotFound, "container nope does not exist"},
		{"404 feature gate", client(t, off, tokAlice), api, nil, trigger.ErrNotFound, "ContainerCheckpoint feature gate"},
		{"500 runtime", n.client(t, tokAlice), api, func() { n.kubelet.FailWith("CRIU binary not found") }, trigger.ErrRuntime, "CRIU binary not found"},
		{"500 runtime timeout", n.client(t, tokAlice), api, func() { n.kubelet.FailWith(""); n.kubelet.SlowRuntime(3*time.Second, 1<<20, 0) }, trigger.ErrRuntime, "DeadlineExceeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			tr := n.trigger(t, tc.k)
			tr.Timeout = time.Second
			before := len(n.kubelet.Requests())
			_, err := tr.Run(context.Background(), tc.target)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("error %v, want %v saying %q", err, tc.want, tc.says)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if tc.k.URL.Host == n.kubelet.URL[len("https://"):] && len(n.kubelet.Requests()) != before+1 {
				t.Errorf("%d requests for one non-transient failure", len(n.kubelet.Requests())-before)
			}
		})
	}
	n.kubelet.SlowRuntime(0, 1<<20, 0)

	// The kubelet does not answer before the client gives up.
	slow := startKubelet(t, t.TempDir(), testkubelet.Options{RuntimeRequestTimeout: time.Minute})
	slow.SlowRuntime(5*time.Second, 1<<20, 0)
	k := client(t, slow, tokAlice)
	k.RuntimeRequestTimeout, k.Grace = time.Second, time.Second
	tr := n.trigger(t, k)
	tr.Timeout = time.Second
	if _, err := tr.Run(context.Background(), api); !errors.Is(err, trigger.ErrTimeout) || !strings.Contains(err.Error(), "ckvault list") {
		t.Fatalf("client timeout: %v", err)
	}
	// Answers are in the trail.
	page, err := n.trail.Query(context.Background(), audit.Filter{Action: trigger.ActionAnswered, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	errs := 0
	for _, r := range page.Records {
		if r.Outcome == audit.Error && r.Detail["reason"] != "" {
			errs++
		}
	}
	if errs < 7 {
		t.Errorf("%d answered records with an error, want one per failed request", errs)
	}
}

// TestClientCertificate: a client certificate from the kubelet's client CA
// authenticates; the serving certificate is verified.
func TestClientCertificate(t *testing.T) {
	kl := startKubelet(t, t.TempDir(), testkubelet.Options{})
	cert, key := kl.ClientCert(t, t.TempDir(), "alice")
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	k := client(t, kl, "")
	k.TLS.Certificates = []tls.Certificate{pair}
	if _, err := k.Checkpoint(context.Background(), api, 30*time.Second); err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	// A kubelet whose certificate the client cannot verify is refused.
	k = client(t, kl, tokAlice)
	k.TLS.RootCAs = nil
	if _, err := k.Checkpoint(context.Background(), api, 30*time.Second); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unverified kubelet certificate: %v", err)
	}
	// http:// is refused before anything is sent.
	k.URL = &url.URL{Scheme: "http", Host: "127.0.0.1:10250"}
	if _, err := k.Checkpoint(context.Background(), api, time.Second); err == nil || !strings.Contains(err.Error(), "only https") {
		t.Fatalf("http kubelet URL: %v", err)
	}
}

// TestSkippedNamespace: an archive the daemon's namespace policy skips is
// reported as such at once, not waited on.
func TestSkippedNamespace(t *testing.T) {
	n := newNode(t, testkubelet.Options{})
	start := time.Now()
	_, err := n.trigger(t, n.client(t, tokAlice)).Run(context.Background(), trigger.Target{Namespace: "kube-system", Pod: "dns-0", Container: "coredns"})
	if !errors.Is(err, trigger.ErrSkipped) {
		t.Fatalf("skipped namespace: %v", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Errorf("took %s to report a skip", time.Since(start))
	}
}

// TestNoDaemon: with nobody vaulting the directory, the wait ends at its
// bound with an error naming the daemon; with the daemon's trail readable
// and silent, sooner.
func TestNoDaemon(t *testing.T) {
	n := newNode(t, testkubelet.Options{})
	k := startKubelet(t, t.TempDir(), testkubelet.Options{}) // a directory no daemon watches
	tr := n.trigger(t, client(t, k, tokAlice))
	tr.Wait.Trail, tr.Wait.VaultWithin = nil, 2*time.Second
	if _, err := tr.Run(context.Background(), api); !errors.Is(err, trigger.ErrNotVaulted) || !strings.Contains(err.Error(), "daemon") {
		t.Fatalf("no daemon, no trail: %v", err)
	}
	time.Sleep(1100 * time.Millisecond)
	tr.Wait.Trail, tr.Wait.DetectWithin, tr.Wait.VaultWithin = n.trail, time.Second, time.Minute
	start := time.Now()
	if _, err := tr.Run(context.Background(), api); !errors.Is(err, trigger.ErrNotDetected) {
		t.Fatalf("no daemon, silent trail: %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("took %s", time.Since(start))
	}
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := trigger.Lock(dir, api)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trigger.Lock(dir, api); !errors.Is(err, trigger.ErrBusy) {
		t.Fatalf("second lock: %v, want ErrBusy", err)
	}
	other := api
	other.Container = "sidecar"
	u2, err := trigger.Lock(dir, other)
	if err != nil {
		t.Fatalf("another container's lock: %v", err)
	}
	u2()
	unlock()
	u3, err := trigger.Lock(dir, api)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	u3()
	if _, err := trigger.Lock(dir, trigger.Target{Namespace: "../x", Pod: "p", Container: "c"}); err == nil {
		t.Error("a namespace with a path in it was accepted")
	}
}

func TestParseAnswer(t *testing.T) {
	good := "/var/lib/kubelet/checkpoints/checkpoint-api-0_payments-server-2026-03-13T21:43:06Z.tar"
	for body, ok := range map[string]bool{
		`{"items":["` + good + `"]}`: true,
		`{"items":["/var/lib/kubelet/checkpoints/checkpoint-api-0_payments-server-2024-04-29T20:43:15+08:00.tar"]}`: true,
		`{"items":[]}`: false,
		`{"items":["` + good + `","` + good + `"]}`:                                           false,
		`{"items":["checkpoints/checkpoint-api-0_payments-server-2026-03-13T21:43:06Z.tar"]}`: false,
		`{"items":["/x/../etc/checkpoint-api-0_payments-server-2026-03-13T21:43:06Z.tar"]}`:   false,
		`{"items":["/c/checkpoint-other-0_payments-server-2026-03-13T21:43:06Z.tar"]}`:        false,
		`{"items":["/c/checkpoint-api-0_payments-sidecar-2026-03-13T21:43:06Z.tar"]}`:         false,
		`{"items":["/c/api.tar"]}`: false,
		`<html>`:                   false,
	} {
		if _, err := trigger.ParseAnswer([]byte(body), api); (err == nil) != ok {
			t.Errorf("ParseAnswer(%s) = %v, want ok=%v", body, err, ok)
		}
	}
}

// FuzzParseAnswer: a kubelet's answer is untrusted; whatever ParseAnswer
// accepts is a clean absolute path to a checkpoint of the target.
func FuzzParseAnswer(f *testing.F) {
	f.Add([]byte(`{"items":["/var/lib/kubelet/checkpoints/checkpoint-api-0_payments-server-2026-03-13T21:43:06Z.tar"]}`))
	f.Add([]byte(`{"items":["/a/../checkpoint-api-0_payments-server-2026-03-13T21:43:06Z.tar"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := trigger.ParseAnswer(body, api)
		if err != nil {
			return
		}
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || !strings.HasPrefix(path.Base(p), "checkpoint-api-0_payments-server-") {
			t.Fatalf("accepted %q", p)
		}
	})
}
