package auditsock

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
)

// The interface the responder commands use (vault/responder.Auditor),
// spelled out here: auditsock must not import the pipeline.
var _ interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
} = (*Client)(nil)

// served is a log served on a real socket with peer credentials.
type served struct {
	log  *audit.Log
	sock string
	c    *Client
}

func serve(t *testing.T) *served {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	pk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k := key{pk}
	l, err := audit.Open(audit.Path(dir), audit.Options{Node: "node-a", Signer: k, Verifier: k, SignInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	sock := filepath.Join(dir, SocketName)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Handler(l))
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := Dial(sock)
	t.Cleanup(func() { c.Close() })
	return &served{log: l, sock: sock, c: c}
}

// all returns every record in the log, oldest first.
func (s *served) all(t *testing.T) []audit.Record {
	t.Helper()
	p, err := s.log.Query(context.Background(), audit.Filter{Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	return p.Records
}

// post sends a raw body to the append endpoint.
func (s *served) post(t *testing.T, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://ckvault/v1/audit/append", bytes.NewReader(body))
	resp, err := s.c.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

func TestAppendStampsPeer(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	if err := s.c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	before := time.Now().Add(-time.Second)
	rec := audit.Record{
		// What the daemon sets; a client's values must not survive.
		Seq: 999, Time: time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC), Node: "forged-node", Prev: audit.Digest{1}, Hash: audit.Digest{2},
		Actor: "daemon", Action: "fetched", Subject: "payments/api-0/server/x", Namespace: "payments", Pod: "api-0", Container: "server",
		Outcome: audit.OK, Detail: map[string]string{"phase": "intent", "size": "42"},
	}
	seq, err := s.c.Append(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	got := s.all(t)
	if len(got) != 1 || got[0].Seq != seq {
		t.Fatalf("seq %d, records %+v", seq, got)
	}
	r := got[0]
	wantActor := "uid:" + strconv.Itoa(os.Getuid())
	if r.Actor != wantActor || r.Node != "node-a" || r.Seq != 1 || r.Time.Before(before) || r.Prev != (audit.Digest{}) {
		t.Errorf("daemon-set fields: actor %q node %q seq %d time %v prev %v", r.Actor, r.Node, r.Seq, r.Time, r.Prev)
	}
	if r.Action != "fetched" || r.Subject != rec.Subject || r.Namespace != "payments" || r.Pod != "api-0" || r.Container != "server" || r.Outcome != audit.OK {
		t.Errorf("client fields not kept: %+v", r)
	}
	if r.Detail[DetailClientActor] != "daemon" || r.Detail[DetailClientPID] != strconv.Itoa(os.Getpid()) ||
		r.Detail["phase"] != "intent" || r.Detail["size"] != "42" || len(r.Detail) != 4 {
		t.Errorf("detail: %v", r.Detail)
	}
	if rep, err := s.log.Verify(ctx, nil); err != nil || !rep.OK() {
		t.Errorf("log does not verify: %+v %v", rep, err)
	}
}

func TestAppendConcurrent(t *testing.T) {
	s := serve(t)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	seqs := make(chan uint64, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				seq, err := s.c.Append(context.Background(), audit.Record{Action: "listed", Subject: fmt.Sprintf("w%d-%d", w, i), Outcome: audit.OK})
				if err != nil {
					t.Error(err)
					return
				}
				seqs <- seq
			}
		}()
	}
	wg.Wait()
	close(seqs)
	seen := map[uint64]bool{}
	for s := range seqs {
		if seen[s] {
			t.Fatalf("seq %d returned twice", s)
		}
		seen[s] = true
	}
	if n := len(s.all(t)); n != writers*each || len(seen) != n {
		t.Fatalf("%d records, %d distinct seqs, want %d", n, len(seen), writers*each)
	}
}

func TestAppendRefusesPipelineActions(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	for _, action := range []string{"shredded", "proven", "uploaded", "sealed", "admitted", "started", "stopped", "exported", "audit-queried", "Fetched"} {
		seq, err := s.c.Append(ctx, audit.Record{Action: action, Subject: "checkpoint-x.tar", Outcome: audit.OK})
		if err == nil || seq != 0 || !errors.Is(err, audit.ErrNotRecorded) || !strings.Contains(err.Error(), "403") {
			t.Errorf("append %q: seq %d, %v", action, seq, err)
		}
	}
	// Every refusal is recorded, as a denial by the peer, and nothing else.
	recs := s.all(t)
	if len(recs) != 10 {
		t.Fatalf("%d records after 10 refusals: %+v", len(recs), recs)
	}
	for _, r := range recs {
		if r.Action != "audit-appended" || r.Outcome != audit.Denied || r.Actor != "uid:"+strconv.Itoa(os.Getuid()) || r.Detail["action"] == "" {
			t.Errorf("refusal record: %+v", r)
		}
	}
	// The allowed ones go through.
	for _, action := range AppendActions {
		if _, err := s.c.Append(ctx, audit.Record{Action: action, Subject: "s", Outcome: audit.Denied}); err != nil {
			t.Errorf("append %q: %v", action, err)
		}
	}
}

func TestAppendRejectsMalformed(t *testing.T) {
	s := serve(t)
	long := strings.Repeat("x", audit.MaxFieldLen+1)
	manyKeys := map[string]string{}
	for i := range audit.MaxDetailKeys - 1 {
		manyKeys[strconv.Itoa(i)] = "v"
	}
	for _, tc := range []struct {
		name string
		body string
		code int
	}{
		{"not json", `{"action":`, 400},
		{"seq set", `{"action":"listed","subject":"s","outcome":"ok","seq":7}`, 400},
		{"node set", `{"action":"listed","subject":"s","outcome":"ok","node":"other"}`, 400},
		{"hash set", `{"action":"listed","subject":"s","outcome":"ok","hash":"00"}`, 400},
		{"no action", `{"subject":"s","outcome":"ok"}`, 400},
		{"bad outcome", `{"action":"listed","subject":"s","outcome":"maybe"}`, 400},
		{"no outcome", `{"action":"listed","subject":"s"}`, 400},
		{"client sets clientActor", `{"action":"listed","subject":"s","outcome":"ok","detail":{"clientActor":"root"}}`, 400},
		{"client sets clientPid", `{"action":"listed","subject":"s","outcome":"ok","detail":{"clientPid":"1"}}`, 400},
		{"empty detail key", `{"action":"listed","subject":"s","outcome":"ok","detail":{"":"v"}}`, 400},
		{"namespace not a Kubernetes name", `{"action":"listed","subject":"s","outcome":"ok","namespace":"Team_A"}`, 400},
		{"pod with a control character", `{"action":"listed","subject":"s","outcome":"ok","pod":"a\u001b[2Kb"}`, 400},
		{"long subject", `{"action":"listed","subject":"` + long + `","outcome":"ok"}`, 400},
		{"long actor", `{"actor":"` + long + `","action":"listed","subject":"s","outcome":"ok"}`, 400},
		{"long detail", `{"action":"listed","subject":"s","outcome":"ok","detail":{"k":"` + long + `"}}`, 400},
		{"two records", `{"action":"listed","subject":"s","outcome":"ok"}{"action":"listed","subject":"s","outcome":"ok"}`, 400},
		{"over the body limit", `{"action":"listed","subject":"s","outcome":"ok","detail":{"k":"` + strings.Repeat("y", MaxAppendBody) + `"}}`, 413},
	} {
		code, msg := s.post(t, []byte(tc.body))
		if code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.name, code, msg, tc.code)
		}
	}
	if _, err := s.c.Append(context.Background(), audit.Record{Action: "listed", Subject: "s", Outcome: audit.OK, Detail: manyKeys}); err == nil {
		t.Error("append with more detail keys than leave room for the daemon's succeeded")
	}
	if recs := s.all(t); len(recs) != 0 {
		t.Fatalf("malformed requests left records: %+v", recs)
	}
	// The limit is no obstacle to the largest record a client may send.
	big := map[string]string{}
	for i := range audit.MaxDetailKeys - 2 {
		big[fmt.Sprintf("%04d", i)+strings.Repeat("k", audit.MaxFieldLen-4)] = strings.Repeat("v", audit.MaxFieldLen)
	}
	f := strings.Repeat("f", audit.MaxFieldLen)
	ns, pod, ctr := strings.Repeat("n", 63), strings.Repeat("p", 253), strings.Repeat("c", 63) // the longest Kubernetes names
	if _, err := s.c.Append(context.Background(), audit.Record{Actor: f, Action: "inspected", Subject: f, Namespace: ns, Pod: pod, Container: ctr, Outcome: audit.Error, Detail: big}); err != nil {
		t.Fatalf("largest record: %v", err)
	}
}

func TestAppendFailsClosed(t *testing.T) {
	s := serve(t)
	ctx := context.Background()
	if _, err := s.c.Append(ctx, audit.Record{Action: "listed", Subject: "s", Outcome: audit.OK}); err != nil {
		t.Fatal(err)
	}
	if err := s.log.Close(); err != nil {
		t.Fatal(err)
	}
	seq, err := s.c.Append(ctx, audit.Record{Action: "fetched", Subject: "s", Outcome: audit.OK})
	if err == nil || seq != 0 || !errors.Is(err, audit.ErrNotRecorded) || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("append on a closed log: seq %d, %v", seq, err)
	}
}

func TestAppendNoDaemon(t *testing.T) {
	dir := t.TempDir()
	c := Dial(filepath.Join(dir, SocketName))
	if err := c.Ping(context.Background()); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Ping without a socket: %v", err)
	}
	_, err := c.Append(context.Background(), audit.Record{Action: "listed", Outcome: audit.OK})
	if !errors.Is(err, ErrNoDaemon) || !errors.Is(err, audit.ErrNotRecorded) {
		t.Errorf("Append without a socket: %v", err)
	}
}

// TestAppendDeniedPeer connects as another uid (a real curl run as nobody)
// through a socket opened up for the test: the request is refused and the
// refusal recorded with that uid.
func TestAppendDeniedPeer(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	s := serve(t)
	// Open the path to the socket for uid 65534 (only for the test).
	for d := filepath.Dir(s.sock); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	if err := os.Chmod(s.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(curl, "-sS", "--unix-socket", s.sock, "-o", "-", "-w", "\n%{http_code}",
		"-d", `{"action":"fetched","subject":"s","outcome":"ok"}`, "http://ckvault/v1/audit/append")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	if !strings.HasSuffix(string(out), "403") {
		t.Fatalf("curl as uid 65534 got:\n%s", out)
	}
	recs := s.all(t)
	if len(recs) != 1 || recs[0].Actor != "uid:65534" || recs[0].Outcome != audit.Denied || recs[0].Action != "audit-appended" {
		t.Fatalf("records: %+v", recs)
	}
}

// FuzzAppendBody feeds arbitrary bodies to the append handler as root: the
// log only ever gains records the rules allow, and always verifies.
func FuzzAppendBody(f *testing.F) {
	for _, s := range []string{
		`{"action":"fetched","subject":"s","outcome":"ok","detail":{"phase":"intent"}}`,
		`{"actor":"uid:1000(alice)@laptop","action":"denied","subject":"x","namespace":"n","pod":"p","container":"c","outcome":"denied"}`,
		`{"action":"shredded","subject":"s","outcome":"ok"}`,
		`{"action":"listed","subject":"s","outcome":"ok","seq":1}`,
		`{"action":"listed","subject":"\u0000\ud800","outcome":"ok","detail":{"clientActor":"x"}}`,
		`[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	l, err := audit.Open(audit.Path(filepath.Join(f.TempDir(), "state")), audit.Options{Node: "node-a"})
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	h := Handler(l)
	ctx := context.WithValue(context.Background(), peerKey{}, Peer{UID: 0, PID: 1})
	f.Fuzz(func(t *testing.T, body []byte) {
		before, _ := l.Last()
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/audit/append", bytes.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		after, _ := l.Last()
		switch {
		case w.Code == http.StatusOK:
			if after != before+1 {
				t.Fatalf("200 but %d records added", after-before)
			}
			p, err := l.Query(context.Background(), audit.Filter{Newest: true, Limit: 1})
			if err != nil {
				t.Fatal(err)
			}
			r := p.Records[0]
			if r.Actor != "uid:0" || !appendable(r.Action) || r.Node != "node-a" || r.Detail[DetailClientPID] != "1" {
				t.Fatalf("appended %+v", r)
			}
		case w.Code == http.StatusForbidden:
			if after != before+1 {
				t.Fatalf("403 but %d records added", after-before)
			}
		default:
			if after != before {
				t.Fatalf("%d but %d records added: %s", w.Code, after-before, w.Body)
			}
		}
	})
}
