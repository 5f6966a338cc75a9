// Package service is the vault service, `ckvault serve`: the one reader of
// the store. It authenticates every caller (client certificates, Kubernetes
// bearer tokens), authorises each request per namespace (deny by default),
// records the request durably in its audit trail BEFORE the first byte of
// the answer (fail closed: 503 and nothing served when it cannot), streams
// objects with bounded memory and HTTP Range, and lists checkpoints from an
// index of verified manifests. It never holds a decryption identity and
// never decrypts. docs/API.md documents the API.
package service

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Auditor takes the service's records; Append returns once the record is
// durable. *audit.Log implements it.
type Auditor interface {
	Append(ctx context.Context, rec audit.Record) (uint64, error)
}

// TrailReader is what the audit endpoints read: the service's own trail.
type TrailReader interface {
	Query(ctx context.Context, f audit.Filter) (audit.Page, error)
	Verify(ctx context.Context, v audit.HeadVerifier) (*audit.Report, error)
}

// Options configure a Service.
type Options struct {
	Store store.Reader
	Index *Index
	Audit Auditor
	// Trail is the service's own trail, for /v1/audit/records and
	// /v1/audit/verify; HeadVerifier verifies its heads.
	Trail        TrailReader
	HeadVerifier audit.HeadVerifier
	// ClientCAs verifies client certificates the TLS layer requested
	// without verifying them (nil: none are accepted).
	ClientCAs *x509.CertPool
	// Tokens reviews bearer tokens (nil: certificates only); Audience is
	// named in error messages.
	Tokens   TokenReviewer
	Audience string
	Authz    Authorizer
	// Holds sets and lifts legal holds (PUT/DELETE /v1/holds); nil
	// answers 501.
	Holds gc.Holder
	// Retention runs GC (GET /v1/gc/plan, POST /v1/gc/runs); nil answers
	// 501 with RetentionOff, which says why and what to do.
	Retention    *Retention
	RetentionOff string
	// MaxStreams caps concurrent object streams; RateLimit and RateBurst
	// limit requests per identity.
	MaxStreams int
	RateLimit  float64
	RateBurst  int
	// WriteTimeout bounds each write of a stream (the deadline moves with
	// progress, so a slow but live download continues).
	WriteTimeout time.Duration
	Logger       *slog.Logger
	Registry     *prometheus.Registry
}

// Service is the HTTP handler of the vault service.
type Service struct {
	st        store.Reader
	index     *Index
	audit     Auditor
	trail     TrailReader
	headV     audit.HeadVerifier
	clientCAs *x509.CertPool
	tokens    TokenReviewer
	audience  string
	authz     Authorizer
	holds     gc.Holder
	// retention is nil when the service may not run GC; retentionOff
	// then says why.
	retention    *Retention
	retentionOff string
	log          *slog.Logger

	streams      *streamSlots
	writeTimeout time.Duration
	rateLimit    rate.Limit
	rateBurst    int
	limMu        sync.Mutex
	limiters     map[string]*rate.Limiter

	mux *http.ServeMux
	m   metrics
	reg *prometheus.Registry

	readyMu  sync.Mutex
	readyErr error
}

type metrics struct {
	requests  *prometheus.CounterVec
	bytes     prometheus.Counter
	denied    prometheus.Counter
	auditFail prometheus.Counter
	streams   prometheus.Gauge
	entries   prometheus.GaugeFunc
	latency   *prometheus.HistogramVec
}

// New builds the service. Options.Store, Index, Audit and Authz are
// required.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Index == nil || o.Audit == nil || o.Authz == nil {
		return nil, errors.New("service: Store, Index, Audit and Authz are required")
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = policy.DefaultMaxStreams
	}
	if o.RateLimit <= 0 {
		o.RateLimit = policy.DefaultRateLimit
	}
	if o.RateBurst <= 0 {
		o.RateBurst = policy.DefaultRateBurst
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Retention == nil && o.RetentionOff == "" {
		o.RetentionOff = "this service does not run retention; run `ckvault gc` as the retention job"
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	s := &Service{
		st: o.Store, index: o.Index, audit: o.Audit, trail: o.Trail, headV: o.HeadVerifier,
		clientCAs: o.ClientCAs, tokens: o.Tokens, audience: o.Audience, authz: o.Authz, holds: o.Holds, log: o.Logger,
		retention: o.Retention, retentionOff: o.RetentionOff,
		writeTimeout: o.WriteTimeout, rateLimit: rate.Limit(o.RateLimit), rateBurst: o.RateBurst, limiters: map[string]*rate.Limiter{},
		reg: o.Registry,
	}
	s.m = metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ckvault_serve_requests_total",
			Help: "Requests by route and status code."}, []string{"route", "code"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "ckvault_serve_object_bytes_total",
			Help: "Object bytes sent."}),
		denied: prometheus.NewCounter(prometheus.CounterOpts{Name: "ckvault_serve_denied_total",
			Help: "Requests refused by the authoriser."}),
		auditFail: prometheus.NewCounter(prometheus.CounterOpts{Name: "ckvault_serve_audit_failures_total",
			Help: "Requests refused (503) because their audit record could not be made durable."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ckvault_serve_streams",
			Help: "Object streams in progress."}),
		entries: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ckvault_serve_index_entries",
			Help: "Checkpoints in the index."}, func() float64 { return float64(o.Index.Len()) }),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ckvault_serve_request_seconds",
			Help: "Time to answer, by route (streams: to the last byte).", Buckets: prometheus.DefBuckets}, []string{"route"}),
	}
	s.streams = newStreamSlots(o.MaxStreams, s.m.streams.Add)
	o.Registry.MustRegister(s.m.requests, s.m.bytes, s.m.denied, s.m.auditFail, s.m.streams, s.m.entries, s.m.latency)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/checkpoints", s.api("list", s.handleList))
	mux.HandleFunc("GET /v1/checkpoints/{id...}", s.api("checkpoint", s.handleCheckpoint))
	mux.HandleFunc("GET /v1/objects/{key...}", s.api("object", s.handleObject))
	mux.HandleFunc("HEAD /v1/objects/{key...}", s.api("object", s.handleObject))
	mux.HandleFunc("GET /v1/audit/segments", s.api("segments", s.handleSegments))
	mux.HandleFunc("GET /v1/audit/records", s.api("records", s.handleRecords))
	mux.HandleFunc("GET /v1/audit/verify", s.api("verify", s.handleAuditVerify))
	mux.HandleFunc("POST /v1/index/refresh", s.api("refresh", s.handleRefresh))
	mux.HandleFunc("POST /v1/restores/{id...}", s.api("restore", s.handleRestoreReport))
	mux.HandleFunc("PUT /v1/holds/{id...}", s.api("hold", s.handleHold))
	mux.HandleFunc("DELETE /v1/holds/{id...}", s.api("hold", s.handleHold))
	mux.HandleFunc("GET /v1/gc/plan", s.api("gc", s.handleGC))
	mux.HandleFunc("POST /v1/gc/runs", s.api("gc", s.handleGC))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, remote.Error{Error: fmt.Sprintf("no such endpoint %s %s; see docs/API.md", r.Method, clipPath(r.URL.Path))})
	})
	s.mux = mux
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// SetReady records whether the service is ready (its index loaded, its
// store reachable); /readyz reports it.
func (s *Service) SetReady(err error) {
	s.readyMu.Lock()
	s.readyErr = err
	s.readyMu.Unlock()
}

func (s *Service) readyz(w http.ResponseWriter, _ *http.Request) {
	s.readyMu.Lock()
	err := s.readyErr
	s.readyMu.Unlock()
	if err != nil {
		// The probe needs no credentials, so the reason stays in the
		// service's log: the store's error names its address, bucket and
		// network.
		http.Error(w, "not ready: the last index refresh failed; the service's log says why", http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ready\n")
}

// request is one authenticated API request in flight.
type request struct {
	s     *Service
	w     *countingWriter
	r     *http.Request
	id    Identity
	start time.Time
	route string
	// intent is the seq of the intent record, 0 before it exists.
	intent uint64
	rec    audit.Record
}

func clipPath(p string) string {
	if len(p) > 200 {
		return p[:200] + "..."
	}
	return p
}

// api wraps a handler: bounded body, authentication (401), rate limit
// (429), and the outcome metric.
func (s *Service) api(route string, h func(q *request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &countingWriter{ResponseWriter: w, h: sha256.New()}
		defer func() {
			s.m.requests.WithLabelValues(route, strconv.Itoa(cw.statusCode())).Inc()
			s.m.latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
		}()
		r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
		id, err := s.authenticate(r)
		if err != nil {
			if errors.Is(err, errUnauthenticated) {
				s.refuseUnauthenticated(cw, r, route, start, err)
				return
			}
			var rl *reviewLimitedError
			if errors.As(err, &rl) {
				// Not recorded, as any unauthenticated 429.
				cw.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(rl.wait.Seconds()))))
				writeError(cw, http.StatusTooManyRequests, remote.Error{Error: rl.Error()})
				return
			}
			// A token that could not be reviewed (reviewUnavailableError;
			// anything else authenticate might return is treated alike:
			// refused, recorded).
			s.authUnavailable(cw, r, route, start, err)
			return
		}
		if wait, ok := s.allow(id); !ok {
			cw.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			writeError(cw, http.StatusTooManyRequests, remote.Error{Error: fmt.Sprintf("rate limit for %s exceeded; retry after %s", id.Actor(), wait.Round(time.Second))})
			return
		}
		q := &request{s: s, w: cw, r: r, id: id, start: start, route: route}
		if err := h(q); err != nil {
			s.log.Warn("request failed", "route", route, "actor", id.Actor(), "err", err)
		}
	}
}

// refuseUnauthenticated answers 401 to a caller without acceptable
// credentials, and records the refusal like any denial: every attempt to
// read the vault is in the trail, with its source address. The caller is
// rate-limited by source address first (429, unrecorded), so a flood of
// anonymous requests costs the trail at most the burst per address. A
// refusal that cannot be recorded is a 503, as for any request.
func (s *Service) refuseUnauthenticated(cw *countingWriter, r *http.Request, route string, start time.Time, err error) {
	anon := unauthenticatedSource(r)
	if wait, ok := s.allow(anon); !ok {
		cw.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeError(cw, http.StatusTooManyRequests, remote.Error{Error: fmt.Sprintf("too many unauthenticated requests from %s; retry after %s", anon.User, wait.Round(time.Second))})
		return
	}
	q, rec := s.unauthenticatedRecord(cw, r, route, start)
	rec.Outcome = audit.Denied
	switch {
	case r.TLS != nil && len(r.TLS.PeerCertificates) > 0:
		rec.Detail["auth"] = "rejected certificate" // authenticate looks at it first
	case r.Header.Get("Authorization") != "":
		rec.Detail["auth"] = "rejected token"
	default:
		rec.Detail["auth"] = "none"
	}
	rec.Detail["reason"] = clip(err.Error())
	rec.Detail["status"] = "401"
	if _, aerr := s.audit.Append(r.Context(), rec); aerr != nil {
		q.auditUnavailable(aerr)
		return
	}
	cw.Header().Set("WWW-Authenticate", `Bearer realm="ckvault"`)
	writeError(cw, http.StatusUnauthorized, remote.Error{Error: err.Error()})
}

// retryAfterUnavailable is the Retry-After of a 503 for a dependency that
// failed (the trail, the API server): a guess, short enough for a client
// to come back soon and long enough not to hammer it.
const retryAfterUnavailable = "5"

// authUnavailable answers 503 to a caller whose bearer token could not be
// reviewed (the API server unreachable, or answering an error), and
// records the attempt like a refusal: every attempt to read the vault is
// in the trail, with its source address, as for a 401. The caller was
// held to the per-address limit before the review was tried
// (authenticate), so this costs the trail no more than a 401 does. If the
// record cannot be written the answer is still a 503 (auditUnavailable):
// nothing is served either way.
func (s *Service) authUnavailable(cw *countingWriter, r *http.Request, route string, start time.Time, err error) {
	s.log.Error("a bearer token could not be reviewed; refusing the request", "source", r.RemoteAddr, "path", clipPath(r.URL.Path), "err", err)
	q, rec := s.unauthenticatedRecord(cw, r, route, start)
	rec.Outcome = audit.Error
	rec.Detail["auth"] = "unreviewed token"
	rec.Detail["reason"] = clip(err.Error())
	rec.Detail["status"] = "503"
	ctx, cancel := recordContext(r)
	defer cancel()
	if _, aerr := s.audit.Append(ctx, rec); aerr != nil {
		q.auditUnavailable(aerr)
		return
	}
	// The cause (the API server's address, its error) is in the log and
	// the record, not in an answer to a caller nobody has authenticated.
	cw.Header().Set("Retry-After", retryAfterUnavailable)
	writeError(cw, http.StatusServiceUnavailable, remote.Error{Error: "the service cannot review bearer tokens right now (its Kubernetes API server did not answer the TokenReview); nothing was served and the attempt is recorded; retry after " +
		retryAfterUnavailable + " seconds or use a client certificate, and tell the operator if it persists"})
}

// recordContext is the context for the record of an attempt that failed
// on a review at the API server: the caller may have gone away while it
// waited (that may even be why the review failed), and the attempt must
// be recorded all the same.
func recordContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
}

// unauthenticatedRecord is the record of a request refused before its
// caller was authenticated, under the actor unauthenticated:SOURCE.
func (s *Service) unauthenticatedRecord(cw *countingWriter, r *http.Request, route string, start time.Time) (*request, audit.Record) {
	anon := Identity{Kind: "unauthenticated", User: remoteHost(r)}
	q := &request{s: s, w: cw, r: r, id: anon, start: start, route: route}
	// The record names the object (and its namespace) the caller tried,
	// and which credential failed, as an authenticated refusal would.
	subject, namespace := r.Method+" "+r.URL.Path, ""
	if key := r.PathValue("key"); key != "" {
		subject = key
		_, namespace, _ = verbOfObject(key)
	} else if id := r.PathValue("id"); strings.Contains(id, "/") {
		subject = id
		namespace, _, _ = strings.Cut(id, "/")
	}
	rec := q.baseRecord("denied", subject, namespace)
	rec.Detail["request"] = route
	rec.Detail["path"] = clip(r.Method + " " + r.URL.Path)
	return q, rec
}

// pruneLimiters makes room in a full table of limiters. First go the
// limiters whose bucket is full again, which a new one would equal. If
// more than three quarters are still there (more identities sent requests
// lately than the table holds: a flood from many sources), arbitrary ones
// go too — each of those identities starts afresh with a burst, which is
// the price of bounded memory. Pruning to three quarters leaves room for a
// quarter of the table before the next scan, so a flood of newcomers costs
// no scan of the whole table each.
func (s *Service) pruneLimiters(now time.Time) {
	refilled := func(l *rate.Limiter) bool { return l.TokensAt(now) >= float64(s.rateBurst) }
	shrink(s.limiters, 0, refilled)
	shrink(s.limiters, maxCacheEntries*3/4, anyEntry)
}

// allow applies the per-identity rate limit; it returns how long to wait
// when the request must be refused.
func (s *Service) allow(id Identity) (time.Duration, bool) {
	now := time.Now()
	s.limMu.Lock()
	defer s.limMu.Unlock()
	key := id.Actor()
	e := s.limiters[key]
	if e == nil {
		if len(s.limiters) >= maxCacheEntries {
			s.pruneLimiters(now)
		}
		e = rate.NewLimiter(s.rateLimit, s.rateBurst)
		s.limiters[key] = e
	}
	res := e.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d, false
	}
	return 0, true
}

// authorize asks the authoriser; a denial (or a failure to decide) is
// audited and answered with 403 (503 when the denial cannot be recorded),
// and authorize returns false.
func (q *request) authorize(verbName, namespace, subject string) bool {
	verb, ok := policy.LookupServeVerb(verbName)
	if !ok {
		panic("service: unknown verb " + verbName)
	}
	d, err := q.s.authz.Authorize(q.r.Context(), q.id, verb, namespace)
	if err != nil {
		q.authzUnavailable(verbName, namespace, subject, err, true)
		return false
	}
	if d.Allowed {
		return true
	}
	reason := d.Reason
	q.s.m.denied.Inc()
	where := whereOf(namespace)
	rec := q.baseRecord("denied", subject, namespace)
	rec.Outcome = audit.Denied
	rec.Detail["request"] = verbName
	rec.Detail["reason"] = clip(reason)
	rec.Detail["status"] = "403"
	if _, err := q.s.audit.Append(q.r.Context(), rec); err != nil {
		q.auditUnavailable(err)
		return false
	}
	writeError(q.w, http.StatusForbidden, remote.Error{
		Error:     fmt.Sprintf("%s may not %s in %s (%s); ask for a grant of verb %q on %s", q.id.Actor(), verbName, where, reason, verbName, where),
		Verb:      verbName,
		Namespace: namespace,
	})
	return false
}

func whereOf(namespace string) string {
	if namespace == "" {
		return "the whole vault"
	}
	return "namespace " + namespace
}

// noDecisionError: the authoriser could not decide (SubjectAccessReview
// unreachable or failing). It is not a denial — a 403 would tell the
// caller to ask for a grant it may already hold — but a 503 to retry.
type noDecisionError struct{ err error }

func (e *noDecisionError) Error() string { return "authoriser unavailable: " + e.err.Error() }
func (e *noDecisionError) Unwrap() error { return e.err }

// authzUnavailable answers 503 (Retry-After) when the authoriser could not
// decide whether the caller may use verbName in namespace, and records
// the refusal (action denied, outcome error, status 503): an authoriser
// that fails allows nothing, and the attempt is in the trail. A refusal
// that cannot be recorded is a 503 too. It returns the error, for the
// handler's log.
//
// tell says whether the answer may name the namespace: not when the
// caller did not name it (a short id it resolves), since it may not be
// allowed to know that a checkpoint there exists.
func (q *request) authzUnavailable(verbName, namespace, subject string, err error, tell bool) error {
	nd := &noDecisionError{err}
	q.s.log.Error("the authoriser could not decide; refusing the request", "actor", q.id.Actor(), "verb", verbName, "namespace", namespace, "err", err)
	rec := q.baseRecord("denied", subject, namespace)
	rec.Outcome = audit.Error
	rec.Detail["request"] = verbName
	rec.Detail["reason"] = clip(nd.Error())
	rec.Detail["status"] = "503"
	ctx, cancel := recordContext(q.r)
	defer cancel()
	if _, aerr := q.s.audit.Append(ctx, rec); aerr != nil {
		q.auditUnavailable(aerr)
		return nd
	}
	q.w.Header().Set("Retry-After", retryAfterUnavailable)
	where, ns := whereOf(namespace), namespace
	if !tell {
		where, ns = "the namespace of what you named", ""
	}
	writeError(q.w, http.StatusServiceUnavailable, remote.Error{
		Error: fmt.Sprintf("the service cannot decide right now whether %s may %s in %s (its authoriser did not answer); nothing was served and the attempt is recorded; retry after %s seconds, and tell the operator if it persists",
			q.id.Actor(), verbName, where, retryAfterUnavailable),
		Verb: verbName, Namespace: ns,
	})
	return nd
}

// baseRecord is a record of this request. The namespace, pod and
// container come from the request (an object key), so each is kept only
// when it is a valid Kubernetes name: the trail refuses records with
// invalid ones, and a request naming something no checkpoint can be named
// must still be recorded (the subject keeps the key as given).
func (q *request) baseRecord(action, subject, namespace string) audit.Record {
	rec := audit.Record{
		Actor: clip(q.id.Actor()), Action: action, Subject: clip(subject), Namespace: validName(namespace, "", ""), Outcome: audit.OK,
		Detail: map[string]string{"source": clip(q.r.RemoteAddr), "auth": q.id.Kind},
	}
	if kp, ok := parseKeyParts(subject); ok {
		rec.Pod, rec.Container = validName("", kp[1], ""), validName("", "", kp[2])
	}
	return rec
}

// validName returns whichever of namespace, pod and container is given if
// it is a valid name of its kind, else "".
func validName(namespace, pod, container string) string {
	if audit.CheckIdentity(namespace, pod, container) != nil {
		return ""
	}
	return namespace + pod + container
}

func parseKeyParts(key string) ([]string, bool) {
	seg := strings.SplitN(key, "/", 4)
	if len(seg) != 4 {
		return nil, false
	}
	return seg, true
}

// begin records the intent; only when it is durable may the answer start.
// On failure it answers 503 and returns false.
func (q *request) begin(action, subject, namespace string, detail map[string]string) bool {
	q.rec = q.baseRecord(action, subject, namespace)
	for k, v := range detail {
		q.rec.Detail[k] = clip(v)
	}
	intent := q.rec
	intent.Detail = cloneDetail(q.rec.Detail)
	intent.Detail["phase"] = "intent"
	seq, err := q.s.audit.Append(q.r.Context(), intent)
	if err != nil {
		q.auditUnavailable(err)
		return false
	}
	q.intent = seq
	return true
}

func cloneDetail(d map[string]string) map[string]string {
	out := make(map[string]string, len(d)+4)
	for k, v := range d {
		out[k] = v
	}
	return out
}

// finish records the outcome: status, bytes sent, their SHA-256 and the
// duration.
func (q *request) finish(failure error) {
	if q.intent == 0 {
		return
	}
	rec := q.rec
	rec.Detail = cloneDetail(q.rec.Detail)
	rec.Detail["phase"] = "done"
	rec.Detail["intent"] = strconv.FormatUint(q.intent, 10)
	rec.Detail["status"] = strconv.Itoa(q.w.statusCode())
	rec.Detail["bytes"] = strconv.FormatInt(q.w.n, 10)
	rec.Detail["sha256"] = hex.EncodeToString(q.w.h.Sum(nil))
	rec.Detail["duration"] = time.Since(q.start).Round(time.Microsecond).String()
	if failure != nil {
		rec.Outcome = audit.Error
		rec.Detail["reason"] = clip(failure.Error())
	} else if q.w.statusCode() >= 400 {
		rec.Outcome = audit.Error
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(q.r.Context()), 30*time.Second)
	defer cancel()
	if _, err := q.s.audit.Append(ctx, rec); err != nil {
		q.s.m.auditFail.Inc()
		q.s.log.Error("recording the outcome of a request in the audit trail failed", "intent", q.intent, "actor", rec.Actor, "subject", rec.Subject, "err", err)
	}
}

// auditUnavailable answers 503: audit fails closed.
func (q *request) auditUnavailable(err error) {
	q.s.m.auditFail.Inc()
	q.s.log.Error("the audit trail refused a record; refusing the request", "actor", q.id.Actor(), "path", q.r.URL.Path, "err", err)
	q.w.Header().Set("Retry-After", retryAfterUnavailable)
	msg := "the service cannot record this request in its audit trail, so it serves nothing; retry later or tell the operator"
	if q.id.Kind != "unauthenticated" {
		// Nobody authenticated gets the trail's error (its file, the
		// disk's state): the service's log has it, as /readyz keeps the
		// store's.
		msg += " (" + err.Error() + ")"
	}
	writeError(q.w, http.StatusServiceUnavailable, remote.Error{Error: msg})
}

// clip makes s a valid record field: valid UTF-8 (a request's path or
// key may not be), at most audit.MaxFieldLen bytes, cut on a character
// boundary. A field the trail refuses would turn the request into a 503.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > audit.MaxFieldLen {
		cut := audit.MaxFieldLen - 3
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return s[:cut] + "..."
	}
	return s
}

// countingWriter counts and hashes the body bytes sent.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
	h      interface {
		io.Writer
		Sum([]byte) []byte
	}
}

func (c *countingWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	c.h.Write(b[:n])
	return n, err
}

func (c *countingWriter) statusCode() int {
	if c.status == 0 {
		return http.StatusOK
	}
	return c.status
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func writeError(w http.ResponseWriter, code int, e remote.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(e)
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(v)
}

// writeJSONStatus is writeJSON with a status other than 200.
func writeJSONStatus(w http.ResponseWriter, code int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	return json.NewEncoder(w).Encode(v)
}

// verbOfObject maps an object key to the verb that reads it and its
// namespace: a checkpoint's ciphertext needs fetch, its manifest and
// signatures need get, in the namespace the key starts with; anything else
// under the audit segments' prefix needs audit. The checkpoint suffixes are
// looked at first because a Kubernetes namespace may be named "audit": its
// checkpoints' keys start with the segments' prefix too, and they are
// checkpoint objects of that namespace, not the cluster-wide trail (a
// segment ends ".jsonl", never in a checkpoint suffix).
func verbOfObject(key string) (verb, namespace string, ok bool) {
	if base, ok := manifest.BaseKeyOf(key); ok {
		ns, _, _ := strings.Cut(base, "/")
		if strings.HasSuffix(key, manifest.SuffixCiphertext) {
			return "fetch", ns, true
		}
		return "get", ns, true
	}
	if strings.HasPrefix(key, audit.SegmentPrefix) {
		return "audit", "", true
	}
	return "", "", false
}

// unauthenticatedSource is the identity under which requests not
// authenticated yet are rate limited: the source address, or for IPv6 its
// /64 — the network a single host or customer is routed, any of whose 2^64
// addresses it may use, each of which would otherwise bring a fresh burst
// of records and TokenReviews. Records still name the full address
// (remoteHost).
func unauthenticatedSource(r *http.Request) Identity {
	h := remoteHost(r)
	if a, err := netip.ParseAddr(h); err == nil && a.Is6() && !a.Is4In6() {
		if p, err := a.WithZone("").Prefix(64); err == nil {
			h = p.String()
		}
	}
	return Identity{Kind: "unauthenticated", User: h}
}

// remoteHost is the client's address without the port, for logs.
func remoteHost(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}
