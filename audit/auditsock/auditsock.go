// Package auditsock serves the audit trail over the daemon's local unix
// socket, so that `ckvault audit query` and `ckvault audit verify` work
// while the daemon holds the bbolt database (bbolt allows one process).
//
// # Access
//
// The socket is <stateDir>/ckvault.sock, mode 0600, in the 0700 state
// directory. On top of the file mode, every request is checked with the
// peer's kernel credentials (SO_PEERCRED): only uid 0 and the daemon's own
// uid are served. Every request, allowed or denied, is itself recorded in
// the trail with the caller as "uid:N" before it is answered; if that
// record cannot be written the request is refused (audit fails closed).
//
// # Wiring (daemon side)
//
//	ln, err := auditsock.Listen(filepath.Join(stateDir, auditsock.SocketName))
//	mux.Handle("/v1/audit/", auditsock.Handler(log))
//	srv := auditsock.NewServer(mux) // sets ConnContext: required
//	go srv.Serve(ln)
//
// # Endpoints (JSON)
//
//	POST /v1/audit/query   body audit.Filter  -> audit.Page
//	POST /v1/audit/verify  empty body          -> audit.Report
//	POST /v1/audit/append  body: see below     -> {"seq": N}
//
// Errors are {"error": "..."} with a 4xx/5xx status.
//
// # Appending (responder commands on a node whose daemon runs)
//
// `ckvault list/verify/fetch/inspect` record every access in the trail of
// the machine they run on; where the daemon holds it, they append through
// the socket. The body names what the client may say, and no more:
//
//	{"actor": "...", "action": "fetched", "subject": "...",
//	 "namespace": "...", "pod": "...", "container": "...",
//	 "outcome": "ok", "detail": {"k": "v"}}
//
// The daemon sets everything else: seq, time, node and the hashes, as for
// any record, and the actor, which is the peer's kernel-reported "uid:N",
// never what the client claims. The claimed actor is kept as
// detail.clientActor and the peer's pid as detail.clientPid (informative
// only: the uid is the identity). A body with any other field (seq, time,
// node, hash...), a detail using those two keys, a field over
// audit.MaxFieldLen, or more than MaxAppendBody bytes is refused (400, 413).
//
// Only the actions of responders (AppendActions: listed, verified, fetched,
// inspected, denied, restored, the trigger's and retention's) may be appended: a local client cannot forge the
// daemon's pipeline records (sealed, proven, shredded...). A refused action
// is itself recorded, as action "audit-appended", outcome denied.
//
// The answer's seq is sent only after the record is durable; any failure is
// an error answer (503 when the log cannot record), so a client that did
// not get a seq MUST treat the record as not written and not act (audit
// fails closed). Client.Append does this and wraps audit.ErrNotRecorded.
package auditsock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
)

// SocketName is the socket's name inside the state directory.
const SocketName = "ckvault.sock"

// Listen creates the unix socket at path, replacing a stale socket file
// (never another kind of file), and restricts it to 0600.
func Listen(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("auditsock: %s exists and is not a socket; remove it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("auditsock: %s is in use: another daemon is running", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("auditsock: listening on %s: %w", path, err)
	}
	// The 0700 state directory keeps others out in the instant before the
	// chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("auditsock: restricting %s to 0600: %w", path, err)
	}
	return ln, nil
}

type peerKey struct{}

// Peer is the kernel-reported identity of the process at the other end.
type Peer struct{ UID, GID, PID int }

// ConnContext records the peer credentials of c in the connection's
// context. Set it as http.Server.ConnContext (NewServer does); without it
// every request is refused.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	p, ok := peerCred(uc)
	if !ok {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the peer recorded by ConnContext.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// NewServer returns an http.Server for h with ConnContext set.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ConnContext: ConnContext, ReadHeaderTimeout: 10 * time.Second}
}

// Handler serves the query and verify endpoints from log, which must be the
// daemon's writable log (requests are recorded in it). Verify uses the
// log's Options.Verifier.
func Handler(log *audit.Log) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/audit/query", func(w http.ResponseWriter, r *http.Request) {
		var f audit.Filter
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("query filter: %w", err))
			return
		}
		if !admit(w, r, log, "audit-queried", filterDetail(&f)) {
			return
		}
		page, err := log.Query(r.Context(), f)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, page)
	})
	mux.HandleFunc("POST /v1/audit/append", func(w http.ResponseWriter, r *http.Request) {
		serveAppend(w, r, log)
	})
	mux.HandleFunc("POST /v1/audit/verify", func(w http.ResponseWriter, r *http.Request) {
		if !admit(w, r, log, "audit-verified", nil) {
			return
		}
		rep, err := log.Verify(r.Context(), nil)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, rep)
	})
	return mux
}

// admit checks the peer and records the request; false means it was
// answered with an error.
func admit(w http.ResponseWriter, r *http.Request, log *audit.Log, action string, detail map[string]string) bool {
	peer, ok := PeerFrom(r.Context())
	if !ok {
		writeError(w, http.StatusForbidden, errors.New("peer credentials unknown: the daemon must serve this handler with auditsock.NewServer (ConnContext)"))
		return false
	}
	actor := "uid:" + strconv.Itoa(peer.UID)
	rec := audit.Record{Actor: actor, Action: action, Subject: "audit-log", Outcome: audit.OK, Detail: detail}
	allowed := peer.UID == 0 || peer.UID == os.Geteuid()
	if !allowed {
		rec.Outcome = audit.Denied
	}
	if _, err := log.Append(r.Context(), rec); err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("refusing the request: %w", err))
		return false
	}
	if !allowed {
		writeError(w, http.StatusForbidden, fmt.Errorf("uid %d may not read the audit trail: only root (or the daemon's own user) may", peer.UID))
	}
	return allowed
}

// MaxAppendBody bounds the body of one append. The largest record the
// field limits allow (8 fields and 32 detail entries of audit.MaxFieldLen
// bytes) is about 72 KiB of JSON.
const MaxAppendBody = 128 << 10

// AppendActions are the actions a client may append: what the responder
// commands (vault/responder) record. "denied" is a responder's refusal of
// an object that failed a check.
// "gc", "deleted", "pinned" and "unpinned" are retention's (vault/gc),
// run by root on a node as `ckvault gc` / `ckvault pin`.
// "restored" is `ckvault restore` (vault/responder.Restore);
// "checkpoint-requested", "checkpoint-answered" and "checkpoint-vaulted" are
// `ckvault checkpoint` (vault/trigger).
var AppendActions = []string{"listed", "verified", "fetched", "inspected", "denied", "gc", "deleted", "pinned", "unpinned",
	"restored", "checkpoint-requested", "checkpoint-answered", "checkpoint-vaulted"}

// Detail keys the daemon sets on appended records; a client may not.
const (
	DetailClientActor = "clientActor"
	DetailClientPID   = "clientPid"
)

// appendRequest is the body of an append: the fields of an audit.Record a
// client controls.
type appendRequest struct {
	Actor     string            `json:"actor,omitempty"`
	Action    string            `json:"action"`
	Subject   string            `json:"subject"`
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Container string            `json:"container,omitempty"`
	Outcome   audit.Outcome     `json:"outcome"`
	Detail    map[string]string `json:"detail,omitempty"`
}

type appendResponse struct {
	Seq uint64 `json:"seq"`
}

func appendable(action string) bool {
	for _, a := range AppendActions {
		if a == action {
			return true
		}
	}
	return false
}

// check refuses a request the log would refuse, so that the client hears
// "bad request" rather than "not recorded".
func (q *appendRequest) check() error {
	if q.Action == "" {
		return errors.New("the record has no action")
	}
	switch q.Outcome {
	case audit.OK, audit.Denied, audit.Error:
	default:
		return fmt.Errorf("outcome %q is not ok, denied or error", q.Outcome)
	}
	for _, f := range []struct{ name, v string }{
		{"actor", q.Actor}, {"action", q.Action}, {"subject", q.Subject},
		{"namespace", q.Namespace}, {"pod", q.Pod}, {"container", q.Container},
	} {
		if len(f.v) > audit.MaxFieldLen {
			return fmt.Errorf("%s is %d bytes, at most %d allowed", f.name, len(f.v), audit.MaxFieldLen)
		}
	}
	if err := audit.CheckIdentity(q.Namespace, q.Pod, q.Container); err != nil {
		return err
	}
	// Two entries are the daemon's.
	if len(q.Detail) > audit.MaxDetailKeys-2 {
		return fmt.Errorf("detail has %d keys, at most %d allowed", len(q.Detail), audit.MaxDetailKeys-2)
	}
	for k, v := range q.Detail {
		switch {
		case k == "":
			return errors.New("detail has an empty key")
		case k == DetailClientActor || k == DetailClientPID:
			return fmt.Errorf("detail key %q is set by the daemon, not the client", k)
		case len(k) > audit.MaxFieldLen || len(v) > audit.MaxFieldLen:
			return fmt.Errorf("detail %.40q is over %d bytes", k, audit.MaxFieldLen)
		}
	}
	return nil
}

// serveAppend appends a client's record with the peer as its actor and
// answers its seq once it is durable.
func serveAppend(w http.ResponseWriter, r *http.Request, log *audit.Log) {
	peer, ok := PeerFrom(r.Context())
	if !ok {
		writeError(w, http.StatusForbidden, errors.New("peer credentials unknown: the daemon must serve this handler with auditsock.NewServer (ConnContext)"))
		return
	}
	actor := "uid:" + strconv.Itoa(peer.UID)
	denial := audit.Record{Actor: actor, Action: "audit-appended", Subject: "audit-log", Outcome: audit.Denied}
	if peer.UID != 0 && peer.UID != os.Geteuid() {
		if _, err := log.Append(r.Context(), denial); err != nil {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("refusing the request: %w", err))
			return
		}
		writeError(w, http.StatusForbidden, fmt.Errorf("uid %d may not write to the audit trail: only root (or the daemon's own user) may", peer.UID))
		return
	}
	var q appendRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxAppendBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&q); err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("append body is over %d bytes: a record holds sizes, digests and short text, never content", MaxAppendBody))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("append body (only actor, action, subject, namespace, pod, container, outcome and detail may be set): %w", err))
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, errors.New("append body holds more than one record"))
		return
	}
	if err := q.check(); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("append: %w", err))
		return
	}
	if !appendable(q.Action) {
		denial.Detail = map[string]string{"action": q.Action}
		if _, err := log.Append(r.Context(), denial); err != nil {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("refusing the request: %w", err))
			return
		}
		writeError(w, http.StatusForbidden, fmt.Errorf("action %q may not be appended through the socket; clients may append only %s", q.Action, strings.Join(AppendActions, ", ")))
		return
	}
	detail := make(map[string]string, len(q.Detail)+2)
	for k, v := range q.Detail {
		detail[k] = v
	}
	if q.Actor != "" {
		detail[DetailClientActor] = q.Actor
	}
	detail[DetailClientPID] = strconv.Itoa(peer.PID)
	seq, err := log.Append(r.Context(), audit.Record{
		Actor: actor, Action: q.Action, Subject: q.Subject,
		Namespace: q.Namespace, Pod: q.Pod, Container: q.Container,
		Outcome: q.Outcome, Detail: detail,
	})
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, appendResponse{Seq: seq})
}

func filterDetail(f *audit.Filter) map[string]string {
	d := map[string]string{}
	add := func(k, v string) {
		if v != "" {
			d[k] = v
		}
	}
	if !f.Since.IsZero() {
		add("since", f.Since.UTC().Format(time.RFC3339))
	}
	if !f.Until.IsZero() {
		add("until", f.Until.UTC().Format(time.RFC3339))
	}
	add("action", f.Action)
	add("namespace", f.Namespace)
	add("pod", f.Pod)
	add("actor", f.Actor)
	add("subject", f.Subject)
	add("outcome", string(f.Outcome))
	return d
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// ErrNoDaemon: nothing listens on the socket; open the database directly.
var ErrNoDaemon = errors.New("no daemon is listening on the socket")

// Client talks to a daemon's audit endpoints.
type Client struct {
	path   string
	dialer *net.Dialer
	hc     *http.Client
}

// Dial returns a client for the socket at socketPath. It connects lazily;
// calls return an error wrapping ErrNoDaemon when no daemon listens.
func Dial(socketPath string) *Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &Client{path: socketPath, dialer: d, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socketPath)
		},
	}}}
}

// Path is the socket the client talks to.
func (c *Client) Path() string { return c.path }

// Ping reports whether a daemon accepts connections on the socket: nil, an
// error wrapping ErrNoDaemon when nothing listens (no socket file, or a
// stale one), or another error (permission denied: the socket is root's).
// It sends no request, so it leaves no record.
func (c *Client) Ping(ctx context.Context) error {
	conn, err := c.dialer.DialContext(ctx, "unix", c.path)
	if err != nil {
		return c.dialError("connect", err)
	}
	return conn.Close()
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Query runs f on the daemon's log.
func (c *Client) Query(ctx context.Context, f audit.Filter) (audit.Page, error) {
	var p audit.Page
	err := c.call(ctx, "query", f, &p)
	return p, err
}

// Verify asks the daemon to verify its log with its trusted keys.
func (c *Client) Verify(ctx context.Context) (*audit.Report, error) {
	var rep audit.Report
	if err := c.call(ctx, "verify", struct{}{}, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// Append records rec in the daemon's log and returns its seq once it is
// durable. The daemon sets Seq, Time, Node, Prev and Hash, and the actor
// (the caller's uid); rec.Actor is kept as detail.clientActor. Only
// AppendActions are accepted. Any error wraps audit.ErrNotRecorded: the
// action rec describes MUST NOT happen. With it *Client is a
// responder.Auditor.
func (c *Client) Append(ctx context.Context, rec audit.Record) (uint64, error) {
	q := appendRequest{
		Actor: rec.Actor, Action: rec.Action, Subject: rec.Subject,
		Namespace: rec.Namespace, Pod: rec.Pod, Container: rec.Container,
		Outcome: rec.Outcome, Detail: rec.Detail,
	}
	var resp appendResponse
	if err := c.call(ctx, "append", q, &resp); err != nil {
		if se, ok := errors.AsType[*statusError](err); ok && se.code == http.StatusNotFound {
			err = fmt.Errorf("%w; the daemon predates appends through its socket: restart it with this version of ckvault", err)
		}
		return 0, fmt.Errorf("%w: action %q: %w", audit.ErrNotRecorded, rec.Action, err)
	}
	if resp.Seq == 0 {
		return 0, fmt.Errorf("%w: action %q: the daemon at %s answered no sequence number", audit.ErrNotRecorded, rec.Action, c.path)
	}
	return resp.Seq, nil
}

// statusError is a daemon's error answer.
type statusError struct {
	op, path, status, msg string
	code                  int
}

func (e *statusError) Error() string {
	return fmt.Sprintf("audit %s via %s: daemon answered %s: %s", e.op, e.path, e.status, e.msg)
}

func (c *Client) dialError(op string, err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("audit %s via %s: %w", op, c.path, ErrNoDaemon)
	}
	return fmt.Errorf("audit %s via %s: %w", op, c.path, err)
}

func (c *Client) call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("audit %s: encoding the request: %w", op, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ckvault/v1/audit/"+op, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return &statusError{op: op, path: c.path, status: resp.Status, msg: e.Error, code: resp.StatusCode}
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("audit %s via %s: decoding the answer: %w", op, c.path, err)
	}
	return nil
}
