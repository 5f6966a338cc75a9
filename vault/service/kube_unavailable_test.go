package service

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// TestKubernetesUnavailableIsRecorded503: the service reaches a real
// kube-apiserver through a gate the test controls. With the API server
// reachable a service account's token is accepted; then the API server is
// taken away (connections refused, as when it is down; then a load
// balancer's 503 in its place). A token the service has not reviewed is
// refused with a 503 and Retry-After, nothing served, and the attempt is
// in the trail (actor unauthenticated:SOURCE, outcome error, reason
// TokenReview unavailable, status 503, never the token) — also when that
// record cannot be written (still 503). A decision the authoriser cannot
// make (SubjectAccessReview unreachable) is a recorded 503 too, for a
// certificate and for a cached token alike, never an allow, and a listing
// across namespaces lists nothing. What was reviewed and allowed before
// keeps working for the caches' lifetimes. Once the API server is back,
// new tokens are accepted again.
func TestKubernetesUnavailableIsRecorded503(t *testing.T) {
	c := testkube.Shared(t)
	for _, ns := range []string{"payments", "other"} {
		c.CreateNamespace(t, ns)
	}
	gate := newAPIGate(t, c)
	tns, kube := delegatingService(t, c, gate.url())
	c.ServiceAccount(t, tns, "responder")
	certUser := tns + "-responder"
	c.Grant(t, "payments", tns+"-responders", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: []string{"list", "get", "fetch"},
	}}, testkube.SA(tns, "responder"), testkube.User(certUser))

	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: "  rateLimit: 1000\n  rateBurst: 1000\n",
		kubernetes: kube})
	cf, kf, err := e.ca.IssueClient(e.dir, "unavail-responder", certUser, "")
	must(t, err)
	e.certs["unavail-responder"] = [2]string{cf, kf}
	anon := e.client("")
	pay := e.vaulted["payments"][0].Object
	bearer := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

	// Reachable: the token is reviewed, the list allowed (both cached now).
	cached := c.Token(t, tns, "responder", "vault", time.Hour)
	if a := e.get(anon, "/v1/checkpoints?namespace=payments", bearer(cached)...); a.code != 200 {
		t.Fatalf("with the API server up: %d %s", a.code, a.body)
	}
	fresh := []string{c.Token(t, tns, "responder", "vault", time.Hour), c.Token(t, tns, "responder", "vault", time.Hour),
		c.Token(t, tns, "responder", "vault", time.Hour)}

	// refused503 checks a 503 that serves nothing, and returns its error.
	refused503 := func(what string, a answer) string {
		t.Helper()
		var body remote.Error
		if a.code != http.StatusServiceUnavailable || a.hdr.Get("Retry-After") == "" || json.Unmarshal(a.body, &body) != nil {
			t.Errorf("%s: %d (Retry-After %q) %s, want a JSON 503 with Retry-After", what, a.code, a.hdr.Get("Retry-After"), a.body)
		}
		if bytes.Contains(a.body, []byte(pay)) || bytes.Contains(a.body, []byte(`"items"`)) {
			t.Errorf("%s: the 503 carries content: %s", what, a.body)
		}
		return body.Error
	}
	// lastRecord is the newest record of actor, which must be a refusal
	// with status 503 whose reason says want.
	lastRecord := func(what, actor string, n int, want string) {
		t.Helper()
		recs := e.records(audit.Filter{Actor: actor})
		if len(recs) != n {
			t.Errorf("%s: %d records of %s, want %d", what, len(recs), actor, n)
			return
		}
		r := recs[n-1]
		if r.Action != "denied" || r.Outcome != audit.Error || r.Detail["status"] != "503" || !strings.Contains(r.Detail["reason"], want) {
			t.Errorf("%s: its record %+v, want action denied, outcome error, status 503, a reason naming %s", what, r, want)
		}
		for _, tok := range append(fresh, cached) {
			if j, _ := json.Marshal(r); bytes.Contains(j, []byte(tok[len(tok)/2:])) {
				t.Errorf("%s: the record holds a token: %s", what, j)
			}
		}
	}
	anonActor := "unauthenticated:127.0.0.1"
	tokActor := "token:system:serviceaccount:" + tns + ":responder"

	for i, mode := range []string{"down", "503"} {
		gate.set(t, mode)
		// A token not reviewed yet: a recorded 503.
		n := len(e.records(audit.Filter{Actor: anonActor}))
		msg := refused503(mode+": an unreviewed token", e.get(anon, "/v1/checkpoints?namespace=payments", bearer(fresh[i])...))
		if !strings.Contains(msg, "TokenReview") || !strings.Contains(msg, "retry") {
			t.Errorf("%s: the 503 says %q, want it to name TokenReview and to retry", mode, msg)
		}
		lastRecord(mode+": an unreviewed token", anonActor, n+1, "TokenReview unavailable")
		if r := e.records(audit.Filter{Actor: anonActor}); len(r) > 0 && r[len(r)-1].Detail["auth"] != "unreviewed token" {
			t.Errorf("%s: the record's auth is %q, want \"unreviewed token\"", mode, r[len(r)-1].Detail["auth"])
		}
	}

	// The API server is down again. What was reviewed and allowed still
	// works: the cached token with its cached decision.
	gate.set(t, "down")
	if a := e.get(anon, "/v1/checkpoints?namespace=payments", bearer(cached)...); a.code != 200 {
		t.Errorf("the cached token, a cached decision, API server down: %d %s, want 200 (cached for 2 minutes)", a.code, a.body)
	}
	// The cached token asking for a decision not cached (get): a recorded
	// 503, not a 403 that would send the caller to ask for a grant.
	n := len(e.records(audit.Filter{Actor: tokActor}))
	refused503("the cached token getting a checkpoint", e.get(anon, "/v1/checkpoints/"+pay, bearer(cached)...))
	lastRecord("the cached token getting a checkpoint", tokActor, n+1, "SubjectAccessReview")
	// A certificate needs no TokenReview, but its decision is a
	// SubjectAccessReview: a recorded 503.
	certActor := "cert:" + certUser
	refused503("a certificate listing payments", e.get(e.client("unavail-responder"), "/v1/checkpoints?namespace=payments"))
	lastRecord("a certificate listing payments", certActor, 1, "SubjectAccessReview")
	// A listing across namespaces cannot tell which to show: it shows
	// none, a 503 in the outcome record after its intent.
	n = len(e.records(audit.Filter{Actor: tokActor}))
	refused503("the cached token listing every namespace", e.get(anon, "/v1/checkpoints", bearer(cached)...))
	recs := e.records(audit.Filter{Actor: tokActor})
	if len(recs) != n+2 || recs[n].Detail["phase"] != "intent" || recs[n+1].Detail["status"] != "503" || recs[n+1].Outcome != audit.Error ||
		!strings.Contains(recs[n+1].Detail["reason"], "SubjectAccessReview") {
		t.Errorf("the cross-namespace listing's records: %+v, want its intent and a 503 outcome naming SubjectAccessReview", recs[n:])
	}
	// A short id resolves among the checkpoints the caller may get: not
	// knowing which, a recorded 503 rather than a 404.
	short := pay[strings.LastIndexByte(pay, '-')+1:][:6]
	n = len(e.records(audit.Filter{Actor: certActor}))
	a := e.get(e.client("unavail-responder"), "/v1/checkpoints/"+short)
	refused503("a certificate resolving a short id", a)
	lastRecord("a certificate resolving a short id", certActor, n+1, "SubjectAccessReview")
	// The namespace is of a checkpoint the caller may not be allowed to
	// know of (a 404 when the authoriser answers): the 503 must not name
	// it, or probing short ids while the authoriser is down would map the
	// vault. The record names it, for auditors.
	if bytes.Contains(a.body, []byte("payments")) {
		t.Errorf("the 503 for a short id names the namespace of the checkpoint it matched: %s", a.body)
	}

	// Fail closed: a token that cannot be reviewed, and a trail that cannot
	// record it, is still a 503 with nothing served.
	gate.set(t, "forward")
	if a := e.get(anon, "/v1/checkpoints?namespace=payments", bearer(fresh[2])...); a.code != 200 {
		t.Errorf("a new token once the API server is back: %d %s, want 200", a.code, a.body)
	}
	gate.set(t, "down")
	must(t, e.srv.Trail.Close())
	refused503("an unreviewed token, trail closed", e.get(anon, "/v1/checkpoints?namespace=payments",
		bearer(c.Token(t, tns, "responder", "vault", time.Hour))...))
}

// apiGate stands between the service and the real kube-apiserver: in mode
// "forward" it passes connections through untouched (TLS end to end);
// "down" closes its port (connections refused, as when the API server is
// down) and every connection it forwarded; "503" answers every request
// with a 503 Status, as a load balancer in front of API servers that are
// all gone does (over TLS with a certificate from the cluster's CA, which
// the service's kubeconfig trusts); "hang" takes every request and never
// answers it.
type apiGate struct {
	c    *testkube.Cluster
	addr string
	mu   sync.Mutex
	stop func()
}

func newAPIGate(t *testing.T, c *testkube.Cluster) *apiGate {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	g := &apiGate{c: c, addr: ln.Addr().String()}
	ln.Close()
	g.set(t, "forward")
	t.Cleanup(func() { g.set(t, "down") })
	return g
}

func (g *apiGate) url() string { return "https://" + g.addr }

func (g *apiGate) set(t *testing.T, mode string) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stop != nil {
		g.stop()
		g.stop = nil
	}
	if mode == "down" {
		return
	}
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ln, err = net.Listen("tcp", g.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	must(t, err)
	switch mode {
	case "forward":
		target := strings.TrimPrefix(g.c.URL, "https://")
		var mu sync.Mutex
		conns, closed := map[net.Conn]bool{}, false
		track := func(c net.Conn) bool {
			mu.Lock()
			defer mu.Unlock()
			if closed {
				c.Close()
				return false
			}
			conns[c] = true
			return true
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				in, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					if !track(in) {
						return
					}
					out, err := net.Dial("tcp", target)
					if err != nil || !track(out) {
						in.Close()
						return
					}
					go func() { io.Copy(out, in); out.Close() }()
					io.Copy(in, out)
					in.Close()
				}()
			}
		}()
		g.stop = func() {
			ln.Close()
			<-done
			mu.Lock()
			closed = true
			for c := range conns {
				c.Close()
			}
			mu.Unlock()
		}
	case "503":
		leaf, err := g.c.CA.Leaf()
		must(t, err)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no healthy upstream","reason":"ServiceUnavailable","code":503}`)
		}), ReadHeaderTimeout: 10 * time.Second}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{leaf}}
		go srv.ServeTLS(ln, "", "")
		g.stop = func() { srv.Close() }
	case "hang":
		// An API server (or a load balancer in front of it) that accepts
		// the request and never answers.
		leaf, err := g.c.CA.Leaf()
		must(t, err)
		release := make(chan struct{})
		srv := &http.Server{Handler: http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}), ReadHeaderTimeout: 10 * time.Second}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{leaf}}
		go srv.ServeTLS(ln, "", "")
		g.stop = func() { close(release); srv.Close() }
	default:
		t.Fatalf("apiGate: no mode %q", mode)
	}
}
