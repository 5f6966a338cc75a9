package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Page sizes of GET /v1/checkpoints and /v1/audit/segments.
const (
	DefaultPageSize = 500
	MaxPageSize     = 1000
	// MaxPageBytes bounds the stored bytes of one page of
	// GET /v1/checkpoints (a page ends early, with a cursor, when the
	// next entry would pass it). Real entries are a few KiB; whoever
	// writes to the store can make each one over a MiB.
	MaxPageBytes  = 32 << 20
	maxQueryValue = 1024
)

// errBadRequest marks a malformed request (400).
var errBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadRequest}, args...)...)
}

// ParseListQuery reads the filters of GET /v1/checkpoints: namespace, pod,
// container, node, prefix, since and until (RFC 3339), cursor and limit.
// Untrusted input: every value is bounded and checked.
func ParseListQuery(v url.Values) (Query, error) {
	var q Query
	for k, vals := range v {
		if len(vals) != 1 {
			return q, badRequest("parameter %q given %d times; give it once", k, len(vals))
		}
		if len(vals[0]) > maxQueryValue {
			return q, badRequest("parameter %q is longer than %d bytes", k, maxQueryValue)
		}
		if strings.ContainsFunc(vals[0], func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return q, badRequest("parameter %q contains a control character", k)
		}
	}
	for k := range v {
		switch k {
		case "namespace", "pod", "container", "node", "prefix", "since", "until", "cursor", "limit":
		default:
			return q, badRequest("unknown parameter %q; see docs/API.md", k)
		}
	}
	q.Namespace, q.Pod, q.Container, q.Node, q.Prefix = v.Get("namespace"), v.Get("pod"), v.Get("container"), v.Get("node"), v.Get("prefix")
	for _, f := range []struct{ name, val string }{{"namespace", q.Namespace}, {"pod", q.Pod}, {"container", q.Container}} {
		if strings.Contains(f.val, "/") {
			return q, badRequest("%s %q contains '/'", f.name, f.val)
		}
	}
	if q.Pod != "" && q.Namespace == "" || q.Container != "" && q.Pod == "" {
		// Same rule as the key prefix: pod needs namespace, container needs pod.
		return q, badRequest("pod needs namespace, and container needs pod")
	}
	var err error
	if s := v.Get("since"); s != "" {
		if q.Since, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return q, badRequest("since %q is not an RFC 3339 time", s)
		}
	}
	if s := v.Get("until"); s != "" {
		if q.Until, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return q, badRequest("until %q is not an RFC 3339 time", s)
		}
	}
	q.After = v.Get("cursor")
	q.Limit = DefaultPageSize
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageSize {
			return q, badRequest("limit %q: give 1 to %d", s, MaxPageSize)
		}
		q.Limit = n
	}
	return q, nil
}

func (q *request) fail(err error) error {
	switch {
	case errors.Is(err, errBadRequest):
		writeError(q.w, http.StatusBadRequest, remote.Error{Error: err.Error()})
	case errors.Is(err, store.ErrNotExist):
		writeError(q.w, http.StatusNotFound, remote.Error{Error: err.Error()})
	default:
		writeError(q.w, http.StatusBadGateway, remote.Error{Error: "reading the store: " + err.Error()})
	}
	return err
}

func (s *Service) handleList(q *request) error {
	lq, err := ParseListQuery(q.r.URL.Query())
	if err != nil {
		return q.fail(err)
	}
	subject := "checkpoints"
	if p := lq.keyPrefix(); p != "" {
		subject += " " + p
	}
	// A listing of one namespace the caller may not list is refused (and
	// audited); a listing across namespaces silently shows only those the
	// caller may list.
	if lq.Namespace != "" && !q.authorize("list", lq.Namespace, subject) {
		return nil
	}
	if !q.begin("listed", subject, lq.Namespace, nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	// The index asks once per namespace it meets, outside its
	// transactions.
	verb, _ := policy.LookupServeVerb("list")
	visible := func(ns string) (bool, error) {
		d, err := s.authz.Authorize(q.r.Context(), q.id, verb, ns)
		if err != nil {
			return false, &noDecisionError{err}
		}
		return d.Allowed, nil
	}
	items, next, err := s.index.List(lq, visible)
	var nd *noDecisionError
	switch {
	case errors.As(err, &nd):
		// Not knowing which namespaces the caller may list, list none
		// (the outcome record says why).
		failure = err
		q.w.Header().Set("Retry-After", retryAfterUnavailable)
		writeError(q.w, http.StatusServiceUnavailable, remote.Error{Error: "the service cannot decide right now which namespaces " + q.id.Actor() +
			" may list (its authoriser did not answer); nothing was listed; retry after " + retryAfterUnavailable + " seconds, and tell the operator if it persists"})
		return err
	case err != nil:
		failure = err
		writeError(q.w, http.StatusServiceUnavailable, remote.Error{Error: err.Error()})
		return err
	}
	if items == nil {
		items = []json.RawMessage{}
	}
	q.rec.Detail["entries"] = strconv.Itoa(len(items))
	// remote.CheckpointList, with the entries as the index stores them.
	failure = writeJSON(q.w, struct {
		Items []json.RawMessage `json:"items"`
		Next  string            `json:"next,omitempty"`
	}{items, next})
	return failure
}

// handleCheckpoint answers one checkpoint's index entry (manifest and
// signatures) by base key or by a unique short-id prefix.
func (s *Service) handleCheckpoint(q *request) error {
	base, err := s.resolveID(q, "get")
	if base == "" {
		return err // answered
	}
	ns, _, _ := strings.Cut(base, "/")
	if !q.authorize("get", ns, base) {
		return nil
	}
	if !q.begin("got", base, ns, nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	e, ok, err := s.index.Get(base)
	switch {
	case err != nil:
		failure = err
		writeError(q.w, http.StatusServiceUnavailable, remote.Error{Error: err.Error()})
	case !ok:
		writeError(q.w, http.StatusNotFound, remote.Error{Error: fmt.Sprintf("no checkpoint %s in the index; run `ckvault list` (new uploads appear after the next index refresh)", base)})
	default:
		failure = writeJSON(q.w, e)
	}
	return failure
}

// resolveID maps the {id} of the request's path — a base key, an object
// key, or a unique short-id prefix among the checkpoints the caller may
// use with verbName — to a base key. It answers (and returns "") when the
// id is malformed, unknown or ambiguous.
func (s *Service) resolveID(q *request, verbName string) (string, error) {
	id := q.r.PathValue("id")
	if len(id) > maxQueryValue || id == "" || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", q.fail(badRequest("checkpoint id is empty, too long or has control characters"))
	}
	base := id
	if b, ok := manifest.BaseKeyOf(id); ok {
		base = b
	}
	if strings.Contains(base, "/") {
		return base, nil
	}
	return s.resolveShortID(q, base, verbName)
}

// resolveShortID finds the one checkpoint, among those the caller may use
// with verbName, whose short id starts with prefix. It answers (and returns
// "") when there is none or more than one.
func (s *Service) resolveShortID(q *request, prefix, verbName string) (string, error) {
	if len(prefix) < 4 {
		return "", q.fail(badRequest("id %q is too short: give at least 4 characters of an id from `ckvault list`", prefix))
	}
	verb, _ := policy.LookupServeVerb(verbName)
	var match []string
	err := s.index.ScanKeys(func(base string) bool {
		i := strings.LastIndexByte(base, '-')
		if i >= 0 && strings.HasPrefix(base[i+1:], prefix) {
			match = append(match, base)
		}
		return len(match) <= 20
	})
	if err != nil {
		return "", q.fail(err)
	}
	var mine []string
	for _, b := range match {
		ns, _, _ := strings.Cut(b, "/")
		d, err := s.authz.Authorize(q.r.Context(), q.id, verb, ns)
		if err != nil {
			// Which checkpoints the id may name is unknown: neither a
			// 404 nor a pick among the others, but a recorded 503 that
			// does not name ns (the caller may not know of it).
			return "", q.authzUnavailable(verbName, ns, clip(fmt.Sprintf("id:%q", prefix)), err, false)
		}
		if d.Allowed {
			mine = append(mine, b)
		}
	}
	switch len(mine) {
	case 1:
		return mine[0], nil
	case 0:
		writeError(q.w, http.StatusNotFound, remote.Error{Error: fmt.Sprintf("no checkpoint you may use with verb %s has an id starting with %q; run `ckvault list`, or give the full key to see which grant you lack", verbName, prefix)})
	default:
		// The answer names checkpoints (to a caller that may hold get
		// without list): it is recorded like a listing, intent first.
		ns, _, _ := strings.Cut(mine[0], "/")
		for _, b := range mine[1:] {
			if n, _, _ := strings.Cut(b, "/"); n != ns {
				ns = ""
			}
		}
		if !q.begin("resolved", clip(fmt.Sprintf("id:%q", prefix)), ns, map[string]string{"matches": strings.Join(mine, " ")}) {
			return "", nil
		}
		writeError(q.w, http.StatusConflict, remote.Error{Error: fmt.Sprintf("id %q is ambiguous: it matches %s; give more digits", prefix, strings.Join(mine, ", "))})
		q.finish(nil)
	}
	return "", nil
}

// handleObject streams one object: a checkpoint's ciphertext (verb fetch),
// its manifest or a signature (get), or an audit segment (audit), with
// HTTP Range. The intent record is durable before the first byte.
func (s *Service) handleObject(q *request) error {
	key := q.r.PathValue("key")
	if len(key) > maxQueryValue || key == "" || strings.ContainsFunc(key, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return q.fail(badRequest("object key is empty, too long or has control characters"))
	}
	if err := store.ValidKey(key); err != nil {
		// Dot segments, empty segments, backslashes, invalid UTF-8: no
		// object has such a key, and its first segment is not the
		// namespace of anything.
		return q.fail(badRequest("%v", err))
	}
	purpose, err := ParseObjectQuery(q.r.URL.Query())
	if err != nil {
		return q.fail(err)
	}
	verb, ns, ok := verbOfObject(key)
	if !ok {
		writeError(q.w, http.StatusNotFound, remote.Error{Error: fmt.Sprintf("%s is not a checkpoint object or an audit segment", key)})
		return nil
	}
	if purpose == remote.PurposeRestore && verb == "fetch" {
		// The ciphertext read for a restore is a restore: its own verb and
		// its own action in the trail (docs/API.md, "restore").
		verb = "restore"
	}
	if !q.authorize(verb, ns, key) {
		return nil
	}
	// The stream cap, shared fairly between identities: a full house
	// answers at once rather than queueing connections.
	release := s.streams.take(q.w, q.id)
	if release == nil {
		return nil
	}
	defer release()
	action := map[string]string{"fetch": "fetched", "get": "got", "audit": "got", "restore": ActionRestoreFetched}[verb]
	detail := map[string]string{}
	if purpose != "" {
		detail["purpose"] = purpose
	}
	if rg := q.r.Header.Get("Range"); rg != "" {
		detail["range"] = rg
	}
	if q.r.Method == http.MethodHead {
		detail["method"] = "HEAD"
	}
	if !q.begin(action, key, ns, detail) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()

	obj, err := s.st.Open(q.r.Context(), key)
	if err != nil {
		failure = err
		return q.fail(err)
	}
	defer obj.Close()
	info := obj.Info()
	h := q.w.Header()
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Cache-Control", "no-store")
	if !info.LastModified.IsZero() {
		h.Set("Last-Modified", info.LastModified.UTC().Format(http.TimeFormat))
	}
	start, length, partial, err := ParseRange(q.r.Header.Get("Range"), info.Size)
	if err != nil {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", info.Size))
		writeError(q.w, http.StatusRequestedRangeNotSatisfiable, remote.Error{Error: err.Error()})
		failure = err
		return nil
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, info.Size))
	}
	if q.r.Method == http.MethodHead {
		q.w.WriteHeader(status)
		return nil
	}
	if start > 0 {
		if _, err := obj.Seek(start, io.SeekStart); err != nil {
			failure = err
			return q.fail(err)
		}
	}
	q.w.WriteHeader(status)
	failure = s.copyBounded(q, obj, length)
	if failure != nil {
		// The client sees a short body (Content-Length says so) and
		// resumes with Range.
		return failure
	}
	return nil
}

// copyBounded copies n bytes with one 256 KiB buffer, moving the write
// deadline with each chunk so a slow but live client is not cut off while
// a stalled one is.
func (s *Service) copyBounded(q *request, r io.Reader, n int64) error {
	rc := http.NewResponseController(q.w)
	buf := make([]byte, 256<<10)
	var done int64
	for done < n {
		chunk := buf[:min(int64(len(buf)), n-done)]
		m, err := io.ReadFull(r, chunk)
		if m > 0 {
			rc.SetWriteDeadline(time.Now().Add(s.writeTimeout))
			if _, werr := q.w.Write(chunk[:m]); werr != nil {
				return fmt.Errorf("sending to the client after %d bytes: %w", done, werr)
			}
			done += int64(m)
			s.m.bytes.Add(float64(m))
		}
		if err != nil {
			return fmt.Errorf("reading the object from the store after %d bytes: %w", done, err)
		}
	}
	return nil
}

// ParseRange reads a Range header against an object of size bytes. Only
// one range of bytes is honoured (what a resuming download sends); a
// multi-range request gets the whole object (RFC 9110 lets a server ignore
// Range). partial is false for the whole object. An unsatisfiable or
// malformed range is an error (416).
func ParseRange(h string, size int64) (start, length int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, 0, false, fmt.Errorf("range %q: only bytes ranges are supported", clipPath(h))
	}
	if strings.Contains(spec, ",") {
		return 0, size, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false, fmt.Errorf("range %q is malformed", clipPath(h))
	}
	num := func(s string) (int64, bool) {
		if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	if first == "" {
		// Suffix range: the last n bytes.
		n, ok := num(last)
		if !ok || n == 0 {
			return 0, 0, false, fmt.Errorf("range %q is malformed", clipPath(h))
		}
		n = min(n, size)
		return size - n, n, true, nil
	}
	a, ok := num(first)
	if !ok {
		return 0, 0, false, fmt.Errorf("range %q is malformed", clipPath(h))
	}
	if a >= size {
		return 0, 0, false, fmt.Errorf("range %q starts beyond the object's %d bytes", clipPath(h), size)
	}
	b := size - 1
	if last != "" {
		if b, ok = num(last); !ok || b < a {
			return 0, 0, false, fmt.Errorf("range %q is malformed", clipPath(h))
		}
		b = min(b, size-1)
	}
	return a, b - a + 1, true, nil
}

// handleSegments lists the audit segments in the store (auditors).
func (s *Service) handleSegments(q *request) error {
	v := q.r.URL.Query()
	after, limit := v.Get("after"), DefaultPageSize
	if len(after) > maxQueryValue {
		return q.fail(badRequest("after is too long"))
	}
	if after != "" && !strings.HasPrefix(after, audit.SegmentPrefix) {
		return q.fail(badRequest("after %q is not an audit segment key", after))
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxPageSize {
			return q.fail(badRequest("limit %q: give 1 to %d", l, MaxPageSize))
		}
		limit = n
	}
	if !q.authorize("audit", "", audit.SegmentPrefix) {
		return nil
	}
	if !q.begin("listed", audit.SegmentPrefix, "", nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	objs, next, err := s.st.List(q.r.Context(), audit.SegmentPrefix, after, limit)
	if err != nil {
		failure = err
		return q.fail(err)
	}
	out := remote.ObjectList{Items: make([]remote.Object, 0, len(objs)), Next: next}
	for _, o := range objs {
		if v, _, _ := verbOfObject(o.Key); v != "audit" {
			continue // a checkpoint of a namespace named "audit": list needs list there
		}
		out.Items = append(out.Items, remote.Object{Key: o.Key, Size: o.Size, LastModified: o.LastModified})
	}
	failure = writeJSON(q.w, out)
	return failure
}

// ParseAuditFilter reads the filters of GET /v1/audit/records.
func ParseAuditFilter(v url.Values) (audit.Filter, error) {
	var f audit.Filter
	for k, vals := range v {
		switch k {
		case "since", "until", "action", "namespace", "pod", "actor", "subject", "outcome", "limit", "cursor", "newest":
		default:
			return f, badRequest("unknown parameter %q; see docs/API.md", k)
		}
		if len(vals) != 1 || len(vals[0]) > maxQueryValue {
			return f, badRequest("parameter %q must be given once, at most %d bytes", k, maxQueryValue)
		}
	}
	var err error
	if s := v.Get("since"); s != "" {
		if f.Since, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return f, badRequest("since %q is not an RFC 3339 time", s)
		}
	}
	if s := v.Get("until"); s != "" {
		if f.Until, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return f, badRequest("until %q is not an RFC 3339 time", s)
		}
	}
	f.Action, f.Namespace, f.Pod, f.Actor, f.Subject = v.Get("action"), v.Get("namespace"), v.Get("pod"), v.Get("actor"), v.Get("subject")
	switch o := audit.Outcome(v.Get("outcome")); o {
	case "", audit.OK, audit.Denied, audit.Error:
		f.Outcome = o
	default:
		return f, badRequest("outcome %q: want ok, denied or error", o)
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > audit.MaxLimit {
			return f, badRequest("limit %q: give 1 to %d", s, audit.MaxLimit)
		}
		f.Limit = n
	}
	f.Cursor = v.Get("cursor")
	switch v.Get("newest") {
	case "", "false":
	case "true":
		f.Newest = true
	default:
		return f, badRequest("newest: true or false")
	}
	return f, nil
}

// handleRecords queries the service's own trail (auditors).
func (s *Service) handleRecords(q *request) error {
	f, err := ParseAuditFilter(q.r.URL.Query())
	if err != nil {
		return q.fail(err)
	}
	if s.trail == nil {
		writeError(q.w, http.StatusNotFound, remote.Error{Error: "this service has no local trail to query; use /v1/audit/segments"})
		return nil
	}
	if !q.authorize("audit", "", "audit records") {
		return nil
	}
	if !q.begin("queried", "audit records", "", nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	page, err := s.trail.Query(q.r.Context(), f)
	if err != nil {
		failure = err
		return q.fail(badRequest("%v", err))
	}
	if page.Records == nil {
		page.Records = []audit.Record{}
	}
	failure = writeJSON(q.w, page)
	return failure
}

// handleAuditVerify verifies the service's own trail (auditors).
func (s *Service) handleAuditVerify(q *request) error {
	if s.trail == nil || s.headV == nil {
		writeError(q.w, http.StatusNotFound, remote.Error{Error: "this service has no local trail to verify; verify the exported segments with `ckvault audit verify --from-store`"})
		return nil
	}
	if !q.authorize("audit", "", "audit trail") {
		return nil
	}
	if !q.begin("verified", "audit trail", "", nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	rep, err := s.trail.Verify(q.r.Context(), s.headV)
	if err != nil {
		failure = err
		writeError(q.w, http.StatusInternalServerError, remote.Error{Error: err.Error()})
		return err
	}
	failure = writeJSON(q.w, rep)
	return failure
}

// handleRefresh brings the index up to date now (new keys only). It needs
// list on the whole vault.
func (s *Service) handleRefresh(q *request) error {
	if !q.authorize("list", "", "index") {
		return nil
	}
	if !q.begin("refreshed", "index", "", nil) {
		return nil
	}
	var failure error
	defer func() { q.finish(failure) }()
	res, err := s.index.RefreshShared(q.r.Context())
	if err != nil {
		failure = err
		return q.fail(err)
	}
	failure = writeJSON(q.w, map[string]any{"added": res.Added, "updated": res.Updated, "removed": res.Removed,
		"unverified": res.Unverified, "seconds": res.Duration.Seconds()})
	return failure
}
