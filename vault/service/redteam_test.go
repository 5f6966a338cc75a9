package service

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Red-team tests of the vault service: attacks by an outsider, by an
// authenticated user of one namespace, and by whoever writes to the store.

// redteamRoles: dave responds in the Kubernetes namespace "audit" (a valid
// namespace name); the auditors group may read the audit trail only.
const redteamRoles = `
  roles:
    - name: audit-ns-responders
      verbs: [list, get, fetch]
      namespaces: [audit]
      subjects: [{user: dave}]
    - name: auditors
      verbs: [audit]
      namespaces: ["*"]
      subjects: [{group: auditors}]
    - name: payments-responders
      verbs: [list, get, fetch]
      namespaces: [payments]
      subjects: [{user: alice}]
`

// vaultInNamespace vaults one sample checkpoint of namespace ns into e's
// store and refreshes the service's index.
func (e *env) vaultInNamespace(t *testing.T, ns, pod string, seed int64) *manifest.Manifest {
	t.Helper()
	adir := filepath.Join(e.dir, "archives", ns+"-"+pod)
	must(t, os.MkdirAll(adir, 0o700))
	p, err := samplearchive.WriteDir(adir, samplearchive.Options{Namespace: ns, Pod: pod, Seed: seed})
	must(t, err)
	m, _, err := testvault.Put(context.Background(), e.st, e.keys, p, "node-a")
	must(t, err)
	if _, err := e.srv.Index.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *env) issue(t *testing.T, name, cn string, orgs ...string) {
	t.Helper()
	cf, kf, err := e.ca.IssueClient(e.dir, name, cn, "", orgs...)
	must(t, err)
	e.certs[name] = [2]string{cf, kf}
}

// TestRedteamNamespaceNamedAudit: checkpoints of a Kubernetes namespace
// named "audit" have keys under "audit/", the prefix of the exported audit
// segments. Their objects must still be checkpoint objects to the service:
// fetched with the verb fetch on namespace "audit" (not with the
// cluster-wide audit verb, which auditors hold without any fetch right),
// and listed from the index.
func TestRedteamNamespaceNamedAudit(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: redteamRoles})
	e.issue(t, "dave", "dave")
	m := e.vaultInNamespace(t, "audit", "web-0", 99)
	if !strings.HasPrefix(m.Object, audit.SegmentPrefix) {
		t.Fatalf("object %s is not under %s", m.Object, audit.SegmentPrefix)
	}
	ct := "/v1/objects/" + m.Object + manifest.SuffixCiphertext

	// An auditor holds the audit verb only: no ciphertext for him.
	if a := e.get(e.client("auditor"), ct); a.code != http.StatusForbidden {
		t.Errorf("auditor fetches the ciphertext of a checkpoint in namespace audit: %d (%d bytes), want 403", a.code, len(a.body))
	}
	if a := e.get(e.client("auditor"), "/v1/objects/"+m.Object+manifest.SuffixManifest); a.code != http.StatusForbidden {
		t.Errorf("auditor gets the manifest of a checkpoint in namespace audit: %d, want 403", a.code)
	}
	// dave may fetch in namespace audit.
	if a := e.get(e.client("dave"), ct); a.code != http.StatusOK || int64(len(a.body)) != m.Ciphertext.Size {
		t.Errorf("dave fetches his namespace's ciphertext: %d %.200s, want 200 and %d bytes", a.code, a.body, m.Ciphertext.Size)
	}
	// ... and sees it listed.
	if l, a := e.list(e.client("dave"), "?namespace=audit"); a.code != 200 || len(l.Items) != 1 || l.Items[0].Base != m.Object || !l.Items[0].Verified {
		t.Errorf("dave lists namespace audit: %d %d entries (%s), want the one verified checkpoint", a.code, len(l.Items), namespaces(l))
	}
	if a := e.get(e.client("dave"), "/v1/checkpoints/"+m.Object); a.code != http.StatusOK {
		t.Errorf("dave gets the entry of %s: %d %.200s", m.Object, a.code, a.body)
	}
	// Through the service client, by base key (the listing of its
	// container's directory), as from the store.
	log, err := audit.Open(laptopTrail(t), audit.Options{Node: "laptop"})
	must(t, err)
	defer log.Close()
	r := &responder.Responder{Store: e.remote("dave"), Trusted: e.keys.Trusted, Audit: log, Actor: "dave"}
	if rep, err := r.Verify(context.Background(), m.Object); err != nil || rep.Object != m.Object {
		t.Errorf("dave verifies %s through the service client: %v", m.Object, err)
	}
	if ents, err := r.List(context.Background(), responder.ListOptions{Namespace: "audit", Pod: "web-0", Container: "app"}); err != nil || len(ents) != 1 || ents[0].Problem != nil {
		t.Errorf("dave lists audit/web-0/app through the service client: %v, %d entries", err, len(ents))
	}
	// The audit records of dave's fetches name namespace audit.
	recs := e.records(audit.Filter{Actor: "cert:dave", Action: "fetched"})
	if len(recs) < 2 || recs[0].Namespace != "audit" {
		t.Errorf("dave's fetch: %d records (%+v), want intent and outcome in namespace audit", len(recs), recs)
	}
	// Real audit segments stay behind the audit verb.
	e.srv.Export(context.Background())
	segs := e.get(e.client("auditor"), "/v1/audit/segments")
	if segs.code != 200 || !strings.Contains(string(segs.body), ".jsonl") {
		t.Fatalf("auditor lists segments: %d %.300s", segs.code, segs.body)
	}
	if strings.Contains(string(segs.body), m.Object) {
		t.Errorf("the auditor's segment listing names checkpoint %s of namespace audit: %.300s", m.Object, segs.body)
	}
	key := audit.SegmentKey(e.cfg.Node, 1, 1)
	if i := strings.Index(string(segs.body), `"key":"audit/`); i >= 0 {
		rest := string(segs.body)[i+len(`"key":"`):]
		key = rest[:strings.IndexByte(rest, '"')]
	}
	if a := e.get(e.client("dave"), "/v1/objects/"+key); a.code != http.StatusForbidden {
		t.Errorf("dave reads audit segment %s: %d, want 403", key, a.code)
	}
	if a := e.get(e.client("auditor"), "/v1/objects/"+key); a.code != http.StatusOK {
		t.Errorf("auditor reads audit segment %s: %d %.200s", key, a.code, a.body)
	}
}

// TestRedteamPathTricks: encoded slashes, dot segments, double slashes and
// look-alike characters in an object key never reach another namespace's
// object: each request is refused before the store is read, or names a key
// the store refuses, and the namespace checked is the object's.
func TestRedteamPathTricks(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	oth := e.vaulted["other"][0].Object
	_, rest, _ := strings.Cut(oth, "/")
	alice := e.client("alice")
	for _, p := range []string{
		"/v1/objects/payments/../" + oth + manifest.SuffixCiphertext,
		"/v1/objects/payments%2F..%2F" + strings.ReplaceAll(oth, "/", "%2F") + manifest.SuffixCiphertext,
		"/v1/objects/payments/%2E%2E/" + oth + manifest.SuffixCiphertext,
		"/v1/objects/payments%2F%2E%2E%2F" + strings.ReplaceAll(oth, "/", "%2F") + manifest.SuffixCiphertext,
		"/v1/objects//" + oth + manifest.SuffixCiphertext,
		"/v1/objects/payments//../" + oth + manifest.SuffixCiphertext,
		"/v1/objects/other%2F" + strings.ReplaceAll(rest, "/", "%2F") + manifest.SuffixCiphertext,
		"/v1/objects/payments\\..\\" + oth + manifest.SuffixCiphertext,
		"/v1/objects/payments/%C0%AE%C0%AE/" + oth + manifest.SuffixCiphertext,
		"/v1/objects/./" + oth + manifest.SuffixCiphertext,
		"/v1/checkpoints/payments/../" + oth,
		"/v1/checkpoints/payments%2F..%2F" + strings.ReplaceAll(oth, "/", "%2F"),
	} {
		req, _ := http.NewRequest(http.MethodGet, e.url()+"/", nil)
		req.URL.Opaque = "" // send the path as written
		req.URL.RawPath = p
		req.URL.Path, _ = pathUnescape(p)
		resp, err := alice.Transport.RoundTrip(req)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
			t.Errorf("alice (payments only) got %d for %s: another namespace's object", resp.StatusCode, p)
		}
		// A malformed key is the client's error, and no reason to
		// believe the store or the trail broken.
		if resp.StatusCode >= 500 {
			t.Errorf("%s: %d, want a 4xx", p, resp.StatusCode)
		}
	}
	for _, r := range e.records(audit.Filter{Actor: "cert:alice"}) {
		if r.Outcome == audit.OK && r.Detail["phase"] == "done" && r.Detail["status"] == "200" {
			t.Errorf("a path trick succeeded: %+v", r)
		}
	}
}

func pathUnescape(p string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			var c byte
			if _, err := fmt.Sscanf(p[i+1:i+3], "%02X", &c); err == nil {
				b.WriteByte(c)
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String(), nil
}

// TestRedteamEveryRefusalIsAudited: a request refused for want of
// credentials (none, a bearer token the service cannot accept) is recorded
// like any other refusal, with its source address; and a request naming
// something no Kubernetes object could be named (an upper-case namespace,
// an invalid pod name) is refused and recorded (403, 404), not turned into
// an unaudited 503 by the trail's name rules.
func TestRedteamEveryRefusalIsAudited(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	pay := e.vaulted["payments"][0].Object
	ct := "/v1/objects/" + pay + manifest.SuffixCiphertext

	anon := e.client("")
	if a := e.get(anon, ct); a.code != http.StatusUnauthorized {
		t.Fatalf("anonymous fetch: %d %s, want 401", a.code, a.body)
	}
	if a := e.get(anon, ct, "Authorization", "Bearer not-a-token"); a.code != http.StatusUnauthorized {
		t.Fatalf("fetch with a bearer token and no TokenReview: %d %s, want 401", a.code, a.body)
	}
	var unauth []audit.Record
	for _, r := range e.records(audit.Filter{Outcome: audit.Denied}) {
		if r.Detail["status"] == "401" {
			unauth = append(unauth, r)
		}
	}
	if len(unauth) != 2 {
		t.Fatalf("%d records of the two unauthenticated fetches, want 2: %+v", len(unauth), unauth)
	}
	for _, r := range unauth {
		if !strings.Contains(r.Subject, pay) || r.Detail["source"] == "" || r.Namespace != "payments" {
			t.Errorf("unauthenticated fetch record lacks the object, its namespace or the source: %+v", r)
		}
	}
	if unauth[0].Detail["auth"] == unauth[1].Detail["auth"] {
		t.Errorf("the records do not tell no credentials from a rejected token: %+v", unauth)
	}

	// Names no checkpoint can have: refused (or not found) and recorded.
	alice := e.client("alice")
	_, rest, _ := strings.Cut(pay, "/")
	for _, c := range []struct {
		path string
		want int
	}{
		{"/v1/objects/Payments/" + rest + manifest.SuffixCiphertext, http.StatusForbidden},
		{"/v1/objects/payments/API_0/app/x-node-a-0123456789abcdef" + manifest.SuffixCiphertext, http.StatusNotFound},
		{"/v1/checkpoints/Other/api-0/app/x-node-a-0123456789abcdef", http.StatusForbidden},
	} {
		before := len(e.records(audit.Filter{Actor: "cert:alice"}))
		a := e.get(alice, c.path)
		if a.code != c.want {
			t.Errorf("%s: %d %.200s, want %d", c.path, a.code, a.body, c.want)
		}
		if after := len(e.records(audit.Filter{Actor: "cert:alice"})); after == before {
			t.Errorf("%s: answered %d with no audit record", c.path, a.code)
		}
	}
}

// TestRedteamOneCallerCannotHoldEveryStream: the cap on concurrent streams
// is the service's; one caller that opens downloads and reads them slowly
// (or not at all) must not hold all of it and starve every other caller.
func TestRedteamOneCallerCannotHoldEveryStream(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", memoryBytes: 24 << 20, serveExtra: "  maxStreams: 2\n"})
	alice := e.client("alice")
	if _, a := e.list(alice, "?namespace=payments"); a.code != 200 {
		t.Fatalf("list: %d", a.code)
	}
	e.srv.Export(context.Background()) // a segment for the auditor to read
	var held []*http.Response
	defer func() {
		for _, r := range held {
			r.Body.Close()
		}
	}()
	for _, m := range e.vaulted["payments"] {
		req, _ := http.NewRequest(http.MethodGet, e.url()+"/v1/objects/"+m.Object+manifest.SuffixCiphertext, nil)
		resp, err := alice.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// Never read: the service blocks writing once the socket
		// buffers are full, holding its stream.
		held = append(held, resp)
	}
	segs := e.get(e.client("auditor"), "/v1/audit/segments")
	i := strings.Index(string(segs.body), `"key":"`)
	if segs.code != 200 || i < 0 {
		t.Fatalf("segments: %d %.300s", segs.code, segs.body)
	}
	rest := string(segs.body)[i+len(`"key":"`):]
	key := rest[:strings.IndexByte(rest, '"')]
	if a := e.get(e.client("auditor"), "/v1/objects/"+key); a.code != http.StatusOK {
		t.Errorf("while alice holds her downloads open, the auditor reading %s gets %d %.200s, want 200", key, a.code, a.body)
	}
	// alice herself was told to slow down on the stream beyond her share.
	limited := 0
	for _, r := range held {
		if r.StatusCode == http.StatusTooManyRequests && r.Header.Get("Retry-After") != "" {
			limited++
		}
	}
	if limited != 1 {
		t.Errorf("alice's streams beyond her share: %d answered 429 with Retry-After, want 1", limited)
	}
}

// TestRedteamJunkKeyHidesNoNamespace: an object at the store's root (no
// namespace directory: debris, or planted by whoever can write there) in a
// namespace the caller may not list must not hide the entries of a
// namespace the caller may list that sorts right after it.
func TestRedteamJunkKeyHidesNoNamespace(t *testing.T) {
	roles := `
  roles:
    - name: team-a
      verbs: [list, get, fetch]
      namespaces: [team-a]
      subjects: [{user: dave}]
`
	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: roles})
	e.issue(t, "dave", "dave")
	// "team" sorts before "team-a/...", and "team0" after it.
	must(t, testvault.PutBytes(context.Background(), e.st, "team"+manifest.SuffixManifest, []byte("{}")))
	m := e.vaultInNamespace(t, "team-a", "web-0", 7)
	l, a := e.list(e.client("dave"), "")
	if a.code != 200 || len(l.Items) != 1 || l.Items[0].Base != m.Object {
		t.Errorf("dave lists what he may: %d %d entries (%s), want %s", a.code, len(l.Items), namespaces(l), m.Object)
	}
}

// listCounter is the real store, counting full listings (List from the
// first key with no prefix: what an index refresh starts with), each made
// to take as long as listing a large vault does.
type listCounter struct {
	store.Store
	n     atomic.Int32
	delay time.Duration
}

func (c *listCounter) List(ctx context.Context, prefix, startAfter string, limit int) ([]store.ObjectInfo, string, error) {
	if prefix == "" && startAfter == "" {
		c.n.Add(1)
		time.Sleep(c.delay)
	}
	return c.Store.List(ctx, prefix, startAfter, limit)
}

// TestRedteamRefreshBurstListsTheStoreOnce: POST /v1/index/refresh lists
// the whole store. A burst of them (one caller within its rate limit, or
// many callers) must not queue one full listing each behind the index's
// lock: requests that arrive while a refresh runs share the next one.
func TestRedteamRefreshBurstListsTheStoreOnce(t *testing.T) {
	roles := `
  roles:
    - name: vault-listers
      verbs: [list]
      namespaces: ["*"]
      subjects: [{user: alice}]
`
	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: roles, noStart: true})
	lc := &listCounter{Store: e.st}
	su := Setup{Store: lc, Trusted: e.keys.Trusted, Signer: e.keys.Signer}
	srv, err := Start(context.Background(), e.cfg, su)
	must(t, err)
	t.Cleanup(func() { srv.Shutdown() })
	e.srv = srv
	lc.n.Store(0)
	lc.delay = 500 * time.Millisecond
	alice := e.client("alice")
	const burst = 30
	var wg sync.WaitGroup
	codes := make(chan int, burst)
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, e.url()+"/v1/index/refresh", nil)
			resp, err := alice.Do(req)
			if err != nil {
				codes <- -1
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Errorf("refresh: %d", c)
		}
	}
	if n := lc.n.Load(); n > 3 {
		t.Errorf("%d concurrent refresh requests listed the whole store %d times, want at most 3", burst, n)
	}
}

// TestRedteamBloatedEntriesDoNotBloatAPage: whoever can write objects under
// a checkpoint key (a node's store credentials suffice for its own keys)
// can make every entry as large as the index allows — a 1 MiB manifest and
// 64 KiB signatures, unverified but listed with their bytes. A page of
// the listing, built in the service's memory and read whole by the client,
// must stay bounded in bytes, not only in entries: the rest comes with the
// cursor.
func TestRedteamBloatedEntriesDoNotBloatAPage(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	ctx := context.Background()
	junk := func(n int) []byte { return []byte(strings.Repeat("x", n)) }
	const entries = 30
	for i := range entries {
		base := fmt.Sprintf("payments/bloat/app/20260313T214306Z-node-a-%016x", i)
		must(t, testvault.PutBytes(ctx, e.st, base+manifest.SuffixManifest, junk(manifest.MaxSize)))
		for _, sfx := range []string{manifest.SuffixManifestSig, manifest.SuffixManifestBundle, manifest.SuffixCiphertextSig, manifest.SuffixCiphertextBundle} {
			must(t, testvault.PutBytes(ctx, e.st, base+sfx, junk(64<<10)))
		}
	}
	if _, err := e.srv.Index.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	alice := e.client("alice")
	seen, pages, cursor := 0, 0, ""
	for {
		q := "?namespace=payments&limit=1000"
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		l, a := e.list(alice, q)
		if a.code != 200 {
			t.Fatalf("list: %d %.200s", a.code, a.body)
		}
		if len(a.body) > MaxPageBytes+4<<20 {
			t.Errorf("one page is %d MiB (%d entries), more than the %d MiB bound and one entry", len(a.body)>>20, len(l.Items), MaxPageBytes>>20)
		}
		seen += len(l.Items)
		pages++
		if l.Next == "" {
			break
		}
		cursor = l.Next
	}
	if want := entries + len(e.vaulted["payments"]); seen != want {
		t.Errorf("%d entries over %d pages, want all %d", seen, pages, want)
	}
}

// TestRedteamAmbiguousIDIsAudited: an ambiguous short id is answered 409
// with the base keys it matches among the caller's checkpoints — names of
// checkpoints, which a caller holding get but not list learns this way.
// That answer is recorded like a listing, with the keys it named.
func TestRedteamAmbiguousIDIsAudited(t *testing.T) {
	roles := `
  roles:
    - name: payments-getters
      verbs: [get]
      namespaces: [payments]
      subjects: [{user: dave}]
`
	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: roles})
	e.issue(t, "dave", "dave")
	ctx := context.Background()
	var bases []string
	for i := 1; i <= 2; i++ {
		b := fmt.Sprintf("payments/api-0/app/20260313T214306Z-node-a-abcd00000000000%d", i)
		must(t, testvault.PutBytes(ctx, e.st, b+manifest.SuffixManifest, []byte("{}")))
		bases = append(bases, b)
	}
	if _, err := e.srv.Index.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	a := e.get(e.client("dave"), "/v1/checkpoints/abcd")
	if a.code != http.StatusConflict || !strings.Contains(string(a.body), bases[0]) {
		t.Fatalf("ambiguous id: %d %s, want 409 naming the candidates", a.code, a.body)
	}
	recs := e.records(audit.Filter{Actor: "cert:dave"})
	named := false
	for _, r := range recs {
		for _, v := range r.Detail {
			if strings.Contains(v, bases[0]) && strings.Contains(v, bases[1]) {
				named = true
			}
		}
	}
	if !named {
		t.Errorf("the 409 naming %v left no record naming them: %+v", bases, recs)
	}
}

// TestRedteamHoldOnNoCheckpointName: a hold request for a key no
// checkpoint can have (an invalid pod name) is the caller's error (400),
// not a 503 that reports the audit trail as failing.
func TestRedteamHoldOnNoCheckpointName(t *testing.T) {
	roles := `
  roles:
    - name: payments-pinners
      verbs: [pin]
      namespaces: [payments]
      subjects: [{user: alice}]
`
	e := newEnv(t, envOptions{backend: "file", noRoles: true, serveExtra: roles})
	for _, id := range []string{"payments/API_0/app/20260313T214306Z-node-a-0123456789abcdef", "payments/api-0/app/x%2F..%2Fy"} {
		req, _ := http.NewRequest(http.MethodPut, e.url()+"/v1/holds/"+id, nil)
		resp, err := e.client("alice").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("PUT /v1/holds/%s: %d, want 400", id, resp.StatusCode)
		}
	}
}
