package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

// TestAuthorisationTable: each verb × namespace × identity kind gets the
// answer the roles give, a denial names verb and namespace, and every
// request that reached the authoriser is in the trail (intent and outcome
// for allowed ones, a denied record for refused ones).
func TestAuthorisationTable(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t, envOptions{backend: backend})
			pay, oth := e.vaulted["payments"][0].Object, e.vaulted["other"][0].Object
			type req struct {
				name, path string
				verb, ns   string
			}
			reqs := []req{
				{"list payments", "/v1/checkpoints?namespace=payments", "list", "payments"},
				{"list other", "/v1/checkpoints?namespace=other", "list", "other"},
				{"get payments", "/v1/objects/" + pay + manifest.SuffixManifest, "get", "payments"},
				{"get other", "/v1/objects/" + oth + manifest.SuffixManifest, "get", "other"},
				{"fetch payments", "/v1/objects/" + pay + manifest.SuffixCiphertext, "fetch", "payments"},
				{"fetch other", "/v1/objects/" + oth + manifest.SuffixCiphertext, "fetch", "other"},
				{"manifest payments", "/v1/checkpoints/" + pay, "get", "payments"},
				{"audit segments", "/v1/audit/segments", "audit", ""},
				{"audit records", "/v1/audit/records", "audit", ""},
			}
			// want[identity][request name] = status
			allowAlice := map[string]bool{"list payments": true, "get payments": true, "fetch payments": true, "manifest payments": true}
			allowBob := map[string]bool{"list other": true}
			allowAuditor := map[string]bool{"audit segments": true, "audit records": true}
			for _, id := range []struct {
				name  string
				allow map[string]bool
				actor string
			}{
				{"alice", allowAlice, "cert:alice"},
				{"bob", allowBob, "cert:spiffe://example.org/ns/ir/sa/bob"},
				{"auditor", allowAuditor, "cert:carol"},
				{"nobody", nil, "cert:nobody"},
			} {
				c := e.client(id.name)
				for _, r := range reqs {
					a := e.get(c, r.path)
					want := http.StatusForbidden
					if id.allow[r.name] {
						want = http.StatusOK
					}
					if a.code != want {
						t.Errorf("%s %s: %d %s, want %d", id.name, r.name, a.code, a.body, want)
						continue
					}
					if want == http.StatusForbidden {
						var body remote.Error
						if err := remote.DecodeJSON(bytes.NewReader(a.body), &body); err != nil || body.Verb != r.verb || body.Namespace != r.ns {
							t.Errorf("%s %s: 403 body %s does not name verb %q and namespace %q", id.name, r.name, a.body, r.verb, r.ns)
						}
					}
				}
				denied := e.records(audit.Filter{Actor: id.actor, Outcome: audit.Denied})
				allowed := e.records(audit.Filter{Actor: id.actor, Outcome: audit.OK})
				wantDenied := len(reqs) - len(id.allow)
				if len(denied) != wantDenied {
					t.Errorf("%s: %d denied records, want %d", id.name, len(denied), wantDenied)
				}
				for _, r := range denied {
					if r.Action != "denied" || r.Detail["request"] == "" || r.Detail["source"] == "" {
						t.Errorf("%s: denied record lacks action/request/source: %+v", id.name, r)
					}
				}
				// Each allowed request: an intent and an outcome.
				if len(allowed) != 2*len(id.allow) {
					t.Errorf("%s: %d ok records, want %d (intent + outcome per allowed request)", id.name, len(allowed), 2*len(id.allow))
				}
			}

			// Refused callers are audited too: a denied record naming the
			// source address for each 401.
			refused := 0
			// No certificate, no token: 401, nothing served.
			for _, r := range reqs {
				if a := e.get(e.client(""), r.path); a.code != http.StatusUnauthorized {
					t.Errorf("anonymous %s: %d %s, want 401", r.name, a.code, a.body)
				} else {
					refused++
				}
			}
			// A token, but the service has no TokenReview configured: 401.
			if a := e.get(e.client(""), "/v1/checkpoints", "Authorization", "Bearer abc"); a.code != http.StatusUnauthorized {
				t.Errorf("token without kubernetes: %d %s, want 401", a.code, a.body)
			} else {
				refused++
			}
			// A certificate from another CA (CN alice!) is not accepted: Go's
			// client does not even offer it (the server names its CA), and
			// the request is anonymous.
			if a := e.get(e.client("stranger"), "/v1/checkpoints?namespace=payments"); a.code != -1 && a.code != http.StatusUnauthorized {
				t.Errorf("certificate from another CA: %d %s, want 401 or a TLS failure", a.code, a.body)
			} else if a.code == http.StatusUnauthorized {
				refused++
			}
			recs := e.records(audit.Filter{Actor: "unauthenticated:127.0.0.1"})
			if len(recs) != refused {
				t.Errorf("%d records of unauthenticated requests, want one for each of the %d refused", len(recs), refused)
			}
			for _, r := range recs {
				if r.Outcome != audit.Denied || r.Action != "denied" || r.Detail["status"] != "401" || r.Detail["source"] == "" || r.Detail["reason"] == "" {
					t.Errorf("record of an unauthenticated request: %+v", r)
				}
			}
		})
	}
}

// TestListShowsOnlyVisibleNamespaces: a listing across namespaces returns
// only the entries the caller may list, with cursor pagination.
func TestListShowsOnlyVisibleNamespaces(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", perNS: 3})
	alice := e.client("alice")
	var all []remote.Checkpoint
	cursor := ""
	for {
		q := "?limit=2"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		l, a := e.list(alice, q)
		if a.code != 200 {
			t.Fatalf("list: %d %s", a.code, a.body)
		}
		all = append(all, l.Items...)
		if l.Next == "" {
			break
		}
		cursor = l.Next
	}
	if len(all) != 3 {
		t.Fatalf("alice sees %d entries, want the 3 in payments", len(all))
	}
	for _, it := range all {
		if it.Namespace != "payments" || !it.Verified || len(it.Manifest) == 0 || len(it.Signatures) == 0 {
			t.Errorf("entry %s: namespace %s verified %v manifest %d bytes", it.Base, it.Namespace, it.Verified, len(it.Manifest))
		}
	}
	// Filters as `ckvault list`: pod, node.
	if l, _ := e.list(alice, "?namespace=payments&pod=api-1"); len(l.Items) != 1 || l.Items[0].Pod != "api-1" {
		t.Errorf("pod filter: %s", namespaces(l))
	}
	if l, _ := e.list(alice, "?namespace=payments&node=elsewhere"); len(l.Items) != 0 {
		t.Errorf("node filter: %d entries", len(l.Items))
	}
	// bob lists everything he may: other only.
	if l, a := e.list(e.client("bob"), ""); a.code != 200 || namespaces(l) != "other,other,other" {
		t.Errorf("bob: %d %s", a.code, namespaces(l))
	}
	// nobody lists everything: an empty list, not an error.
	if l, a := e.list(e.client("nobody"), ""); a.code != 200 || len(l.Items) != 0 {
		t.Errorf("nobody: %d %d entries", a.code, len(l.Items))
	}
	// Malformed queries are 400.
	for _, q := range []string{"?limit=0", "?limit=x", "?since=yesterday", "?pod=a", "?bogus=1", "?namespace=a&namespace=b"} {
		if _, a := e.list(alice, q); a.code != http.StatusBadRequest {
			t.Errorf("list%s: %d, want 400", q, a.code)
		}
	}
}

// TestFailClosed: when the trail cannot take the intent record (its
// database closed) the service answers 503 and sends nothing else: not
// one byte of the object, the listing, the entry or the trail, for every
// endpoint that records, and for a denial too (a denial it cannot record is
// not answered 403). TestFailClosedDiskFull does the same with a full disk.
func TestFailClosed(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	pay := e.vaulted["payments"][0].Object
	obj := pay + manifest.SuffixCiphertext
	alice, auditor, nobody := e.client("alice"), e.client("auditor"), e.client("nobody")
	if a := e.get(alice, "/v1/objects/"+obj); a.code != 200 {
		t.Fatalf("before: %d", a.code)
	}
	ct, err := testvault.GetBytes(context.Background(), e.st, obj)
	if err != nil {
		t.Fatal(err)
	}
	man, err := testvault.GetBytes(context.Background(), e.st, pay+manifest.SuffixManifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Trail.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		c       *http.Client
		path    string
		content []byte
	}{
		{alice, "/v1/objects/" + obj, ct[:64]},
		{alice, "/v1/objects/" + pay + manifest.SuffixManifest, man[:64]},
		{alice, "/v1/checkpoints?namespace=payments", []byte(`"items"`)},
		{alice, "/v1/checkpoints/" + pay, []byte(`"manifest"`)},
		{alice, "/v1/objects/" + e.vaulted["other"][0].Object + manifest.SuffixManifest, nil}, // denied
		{nobody, "/v1/checkpoints?namespace=payments", nil},                                   // denied
		{auditor, "/v1/audit/records", []byte(`"records"`)},
		{auditor, "/v1/audit/segments", []byte(`"items"`)},
		{auditor, "/v1/audit/verify", []byte(`"heads"`)},
	} {
		a := e.get(c.c, c.path)
		if a.code != http.StatusServiceUnavailable {
			t.Errorf("%s with a closed trail: %d, want 503", c.path, a.code)
		}
		var body remote.Error
		dec := json.NewDecoder(bytes.NewReader(a.body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil || !strings.Contains(body.Error, "audit trail") || len(a.body) > 2048 {
			t.Errorf("%s: the 503 is not the audit error alone (%v): %.300q", c.path, err, a.body)
		}
		if c.content != nil && bytes.Contains(a.body, c.content) {
			t.Errorf("%s: the 503 carries content", c.path)
		}
		if a.hdr.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", c.path)
		}
	}
}

// TestRange: single ranges give 206 with the right bytes and
// Content-Range; unsatisfiable ones 416; the outcome record carries the
// SHA-256 and count of exactly the bytes sent.
func TestRange(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", memoryBytes: 256 << 10})
	obj := e.vaulted["payments"][0].Object + manifest.SuffixCiphertext
	ct, err := testvault.GetBytes(context.Background(), e.st, obj)
	if err != nil {
		t.Fatal(err)
	}
	alice := e.client("alice")
	n := int64(len(ct))
	for _, c := range []struct {
		rng        string
		code       int
		start, end int64 // inclusive
	}{
		{"bytes=0-99", 206, 0, 99},
		{"bytes=100-", 206, 100, n - 1},
		{"bytes=-50", 206, n - 50, n - 1},
		{fmt.Sprintf("bytes=%d-%d", n-10, n+1000), 206, n - 10, n - 1},
		{fmt.Sprintf("bytes=%d-", n), 416, 0, 0},
		{"bytes=5-1", 416, 0, 0},
		{"items=0-1", 416, 0, 0},
	} {
		a := e.get(alice, "/v1/objects/"+obj, "Range", c.rng)
		if a.code != c.code {
			t.Errorf("%s: %d, want %d", c.rng, a.code, c.code)
			continue
		}
		if c.code != 206 {
			continue
		}
		if !bytes.Equal(a.body, ct[c.start:c.end+1]) {
			t.Errorf("%s: wrong bytes", c.rng)
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", c.start, c.end, n); a.hdr.Get("Content-Range") != want {
			t.Errorf("%s: Content-Range %q, want %q", c.rng, a.hdr.Get("Content-Range"), want)
		}
		sum := sha256.Sum256(a.body)
		// The outcome is recorded after the last byte reaches the client:
		// wait for it rather than race it.
		recs := e.records(audit.Filter{Actor: "cert:alice", Action: "fetched", Newest: true, Limit: 1})
		for deadline := time.Now().Add(5 * time.Second); recs[0].Detail["phase"] != "done" && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			recs = e.records(audit.Filter{Actor: "cert:alice", Action: "fetched", Newest: true, Limit: 1})
		}
		if d := recs[0].Detail; d["phase"] != "done" || d["bytes"] != strconv.Itoa(len(a.body)) || d["sha256"] != hex.EncodeToString(sum[:]) || d["range"] != c.rng {
			t.Errorf("%s: outcome record %v", c.rng, d)
		}
	}
}

// cutProxy forwards TCP to target, cutting the first connection after
// limit bytes from the server.
func cutProxy(t *testing.T, target string, limit int64) (addr string, conns *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			first := conns.Add(1) == 1
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				go io.Copy(s, c)
				if first {
					io.CopyN(c, s, limit)
					return
				}
				io.Copy(c, s)
			}()
		}
	}()
	return ln.Addr().String(), conns
}

// TestClientResumesBrokenDownload: the client's object reader resumes with
// Range where a cut connection left it, and the bytes are whole.
func TestClientResumesBrokenDownload(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", memoryBytes: 2 << 20})
	obj := e.vaulted["payments"][0].Object + manifest.SuffixCiphertext
	ct, err := testvault.GetBytes(context.Background(), e.st, obj)
	if err != nil {
		t.Fatal(err)
	}
	addr, conns := cutProxy(t, e.srv.Addr, 300<<10)
	c := e.certs["alice"]
	rs, err := remote.New(remote.Config{Server: "https://" + addr, CAFile: e.ca.CertFile, CertFile: c[0], KeyFile: c[1]})
	if err != nil {
		t.Fatal(err)
	}
	o, err := rs.Open(context.Background(), obj)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(o)
	o.Close()
	if err != nil {
		t.Fatalf("read through a cut connection: %v", err)
	}
	if !bytes.Equal(got, ct) {
		t.Fatalf("resumed download: %d bytes, differs from the object's %d", len(got), len(ct))
	}
	if conns.Load() < 2 {
		t.Fatalf("the connection was never cut (%d connections)", conns.Load())
	}
	ranged := 0
	for _, r := range e.records(audit.Filter{Actor: "cert:alice", Action: "fetched"}) {
		if r.Detail["phase"] == "intent" && strings.HasPrefix(r.Detail["range"], "bytes=") {
			ranged++
		}
	}
	if ranged == 0 {
		t.Error("no ranged fetch in the trail: the client did not resume with Range")
	}
}

// TestRateLimit: beyond the burst, 429 with Retry-After; other identities
// are unaffected.
func TestRateLimit(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", serveExtra: "  rateLimit: 0.5\n  rateBurst: 3\n"})
	alice := e.client("alice")
	codes := []int{}
	for range 5 {
		_, a := e.list(alice, "?namespace=payments")
		codes = append(codes, a.code)
		if a.code == http.StatusTooManyRequests && a.hdr.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if fmt.Sprint(codes) != "[200 200 200 429 429]" {
		t.Errorf("codes %v, want three 200 then 429", codes)
	}
	if _, a := e.list(e.client("bob"), "?namespace=other"); a.code != 200 {
		t.Errorf("bob after alice's burst: %d", a.code)
	}
}

// TestClientThroughService: the responder, reading through the service
// client, lists, verifies and fetches exactly as from the store, and an
// auditor reads the merged exported trail through the service.
func TestClientThroughService(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t, envOptions{backend: backend})
			log, err := audit.Open(laptopTrail(t), audit.Options{Node: "laptop"})
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			r := &responder.Responder{Store: e.remote("alice"), Trusted: e.keys.Trusted, Audit: log, Actor: "alice"}
			ctx := context.Background()
			entries, err := r.List(ctx, responder.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 2 {
				t.Fatalf("%d entries, want alice's 2", len(entries))
			}
			for _, en := range entries {
				if en.Problem != nil || en.Namespace() != "payments" {
					t.Errorf("%s: %v", en.Base, en.Problem)
				}
			}
			m := e.vaulted["payments"][1]
			rep, err := r.Verify(ctx, entries[0].ID)
			if err != nil {
				t.Fatalf("verify through the service: %v", err)
			}
			if len(rep.Checks) != 5 {
				t.Errorf("checks %v", rep.Checks)
			}
			out := filepath.Join(t.TempDir(), "out.tar")
			got, err := r.Fetch(ctx, m.Object, out, responder.FetchOptions{Identities: []age_identity{e.keys.Identity}})
			if err != nil {
				t.Fatalf("fetch through the service: %v", err)
			}
			b, _ := os.ReadFile(out)
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != got.Plaintext.SHA256 {
				t.Error("fetched archive differs")
			}
			// Another namespace's checkpoint: refused by the service.
			if _, err := r.Verify(ctx, e.vaulted["other"][0].Object); err == nil {
				t.Error("alice verified a checkpoint of namespace other through the service")
			}

			// The service's trail, exported, read back through the service
			// by an auditor.
			e.srv.Export(ctx)
			trail, err := audit.ReadStore(ctx, e.remote("auditor"), e.keys.Trusted.DER())
			if err != nil {
				t.Fatal(err)
			}
			if !trail.Report.OK() || len(trail.Nodes["serve-test"]) == 0 {
				t.Fatalf("exported service trail: ok=%v findings=%v nodes=%d", trail.Report.OK(), trail.Report.Findings, len(trail.Nodes))
			}
			fetched := 0
			for _, rec := range trail.Nodes["serve-test"] {
				if rec.Action == "fetched" && rec.Actor == "cert:alice" && rec.Detail["phase"] == "done" {
					fetched++
				}
			}
			if fetched == 0 {
				t.Error("the exported trail lacks alice's fetch")
			}
			// alice may not read the audit trail.
			if _, err := audit.ReadStore(ctx, e.remote("alice"), e.keys.Trusted.DER()); err == nil {
				t.Error("alice read the audit segments")
			}
		})
	}
}

// maliciousService is a proxy in front of the real service that swaps
// what it answers for one checkpoint.
func maliciousService(t *testing.T, e *env, rewrite func(path string, body []byte) []byte) *remote.Store {
	target, _ := url.Parse(e.url())
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = e.client("alice").Transport
	rp.ModifyResponse = func(resp *http.Response) error {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		b = rewrite(resp.Request.URL.Path, b)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
		resp.Header.Del("Content-Range")
		if resp.StatusCode == http.StatusPartialContent {
			resp.StatusCode = http.StatusOK
		}
		return nil
	}
	leaf, err := e.ca.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: rp}
	go hs.Serve(tlsListener(ln, leaf))
	t.Cleanup(func() { hs.Close() })
	c := e.certs["alice"]
	rs, err := remote.New(remote.Config{Server: "https://" + ln.Addr().String(), CAFile: e.ca.CertFile, CertFile: c[0], KeyFile: c[1], Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestMaliciousServiceIsCaught: a service that swaps a checkpoint's
// ciphertext for another's, truncates it, or serves another checkpoint's
// manifest under this one's name is caught by the client's own checks.
func TestMaliciousServiceIsCaught(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	ctx := context.Background()
	a, b := e.vaulted["payments"][0], e.vaulted["payments"][1]
	ctB, _ := testvault.GetBytes(ctx, e.st, b.Object+manifest.SuffixCiphertext)
	mB, _ := testvault.GetBytes(ctx, e.st, b.Object+manifest.SuffixManifest)
	sigB, _ := testvault.GetBytes(ctx, e.st, b.Object+manifest.SuffixManifestSig)
	log, err := audit.Open(laptopTrail(t), audit.Options{Node: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	for _, c := range []struct {
		name    string
		rewrite func(path string, body []byte) []byte
		check   string
	}{
		{"swapped ciphertext", func(p string, body []byte) []byte {
			if strings.HasSuffix(p, a.Object+manifest.SuffixCiphertext) {
				return ctB
			}
			return body
		}, responder.CheckCiphertext},
		{"truncated ciphertext", func(p string, body []byte) []byte {
			if strings.HasSuffix(p, a.Object+manifest.SuffixCiphertext) {
				return body[:len(body)/2]
			}
			return body
		}, responder.CheckCiphertext},
		{"replayed manifest", func(p string, body []byte) []byte {
			if strings.HasSuffix(p, "/v1/checkpoints") {
				// Put B's signed manifest into A's entry.
				var l remote.CheckpointList
				remote.DecodeJSON(bytes.NewReader(body), &l)
				for i := range l.Items {
					if l.Items[i].Base == a.Object {
						l.Items[i].Manifest = mB
						l.Items[i].Signatures[manifest.SuffixManifestSig] = sigB
						delete(l.Items[i].Signatures, manifest.SuffixManifestBundle)
					}
				}
				return mustJSON(l)
			}
			return body
		}, responder.CheckKeyBinding},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &responder.Responder{Store: maliciousService(t, e, c.rewrite), Trusted: e.keys.Trusted, Audit: log, Actor: "alice"}
			_, err := r.Verify(ctx, a.Object)
			var ce *responder.CheckError
			if !errorsAs(err, &ce) || ce.Check != c.check {
				t.Fatalf("verify through a malicious service: %v, want the %s check to fail", err, c.check)
			}
		})
	}
}

type age_identity = age.Identity

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func errorsAs(err error, target any) bool { return err != nil && errors.As(err, target) }

func tlsListener(ln net.Listener, cert tls.Certificate) net.Listener {
	return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
}

func laptopTrail(t *testing.T) string {
	d := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(d, audit.FileName)
}

// TestRecordFieldsFromRequestsAreValid: what a caller puts in a request
// reaches the trail clipped to valid UTF-8 on a character boundary, so an
// odd but harmless request (a prefix that is not UTF-8, or long and
// multi-byte) is answered — here an empty listing — with its records,
// rather than refused 503 as if the trail were down.
func TestRecordFieldsFromRequestsAreValid(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	alice := e.client("alice")
	for _, prefix := range []string{"payments/\xff", strings.Repeat("é", 512)} {
		l, a := e.list(alice, "?prefix="+url.QueryEscape(prefix))
		if a.code != http.StatusOK || len(l.Items) != 0 {
			t.Errorf("list with prefix %.20q…: %d %.200s, want 200 and no entries", prefix, a.code, a.body)
		}
	}
	if n := len(e.records(audit.Filter{Actor: "cert:alice", Action: "listed"})); n != 4 {
		t.Errorf("%d listed records, want an intent and an outcome for each of 2 lists", n)
	}
}

// TestClientEndsStreamsCleanly: the service client reads each answer to its
// end before it hangs up, so the service's outcome record of a whole
// download says what happened — every byte sent, status 200, outcome ok —
// instead of racing the client's reset of the stream ("http2: stream
// closed" after the last byte had in fact arrived).
func TestClientEndsStreamsCleanly(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file", memoryBytes: 1 << 20, serveExtra: "  rateLimit: 1000\n  rateBurst: 1000\n"})
	obj := e.vaulted["payments"][0].Object + manifest.SuffixCiphertext
	ct, err := testvault.GetBytes(context.Background(), e.st, obj)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(ct)
	rs := e.remote("alice")
	const n = 30
	for range n {
		o, err := rs.Open(context.Background(), obj)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(o)
		o.Close()
		if err != nil || !bytes.Equal(b, ct) {
			t.Fatalf("download: %d bytes, %v", len(b), err)
		}
	}
	var recs []audit.Record
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		recs = nil
		for _, r := range e.records(audit.Filter{Actor: "cert:alice", Action: "fetched"}) {
			if r.Detail["phase"] == "done" {
				recs = append(recs, r)
			}
		}
		if len(recs) == n {
			break
		}
	}
	if len(recs) != n {
		t.Fatalf("%d outcome records for %d downloads", len(recs), n)
	}
	bad := 0
	for _, r := range recs {
		d := r.Detail
		if r.Outcome != audit.OK || d["bytes"] != strconv.Itoa(len(ct)) || d["sha256"] != hex.EncodeToString(sum[:]) {
			bad++
			t.Logf("outcome %s, %s bytes: %s", r.Outcome, d["bytes"], d["reason"])
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d whole downloads recorded as anything but ok with every byte", bad, n)
	}
}

// TestReadyzTellsNoStoreDetails: /readyz answers without credentials (the
// kubelet probes it), so while the index cannot be refreshed it says 503
// and that the service is not ready, never the store's error, which names
// the store's address, bucket and network — the operator finds that in the
// service's log.
func TestReadyzTellsNoStoreDetails(t *testing.T) {
	e := newEnv(t, envOptions{backend: "file"})
	anon := e.client("")
	if a := e.get(anon, "/readyz"); a.code != http.StatusOK {
		t.Fatalf("/readyz of a ready service: %d %s", a.code, a.body)
	}
	e.srv.Service.SetReady(errors.New("listing s3://vault-secret-bucket/ at https://minio.internal.example:9000: dial tcp 10.20.30.40:9000: connection refused"))
	a := e.get(anon, "/readyz")
	if a.code != http.StatusServiceUnavailable || !strings.Contains(string(a.body), "not ready") {
		t.Fatalf("/readyz while the store is unreachable: %d %q, want 503 saying not ready", a.code, a.body)
	}
	for _, leak := range []string{"vault-secret-bucket", "minio.internal", "10.20.30.40", "dial tcp"} {
		if strings.Contains(string(a.body), leak) {
			t.Errorf("/readyz tells an unauthenticated caller %q: %q", leak, a.body)
		}
	}
	e.srv.Service.SetReady(nil)
	if a := e.get(anon, "/readyz"); a.code != http.StatusOK {
		t.Fatalf("/readyz once ready again: %d %s", a.code, a.body)
	}
}
