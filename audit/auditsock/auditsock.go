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
//
// Errors are {"error": "..."} with a 4xx/5xx status.
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
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, Peer{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)})
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
	path string
	hc   *http.Client
}

// Dial returns a client for the socket at socketPath. It connects lazily;
// calls return an error wrapping ErrNoDaemon when no daemon listens.
func Dial(socketPath string) *Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &Client{path: socketPath, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socketPath)
		},
	}}}
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

func (c *Client) call(ctx context.Context, op string, in, out any) error {
	body, _ := json.Marshal(in)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ckvault/v1/audit/"+op, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("audit %s via %s: %w", op, c.path, ErrNoDaemon)
		}
		return fmt.Errorf("audit %s via %s: %w", op, c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e)
		return fmt.Errorf("audit %s via %s: daemon answered %s: %s", op, c.path, resp.Status, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("audit %s via %s: decoding the answer: %w", op, c.path, err)
	}
	return nil
}
