package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Config says how to reach the service.
type Config struct {
	// Server is the service's base URL, https://HOST[:PORT].
	Server string
	// CAFile is the CA bundle the service's certificate must chain to;
	// empty uses the system roots.
	CAFile string
	// CertFile and KeyFile are a client certificate (mTLS).
	CertFile, KeyFile string
	// Token, or TokenFile (re-read at every request, so a projected,
	// rotating token keeps working), is a bearer token.
	Token     string
	TokenFile string
	// Retries bounds resumptions of one broken download and retries of a
	// 429/503 answer (default 5).
	Retries int
	// Purpose, when PurposeRestore, marks every object read as part of a
	// restore: the service then authorises the ciphertext with the verb
	// restore instead of fetch, and records it as a restore.
	Purpose string
}

// Store reads the vault through the service. It implements store.Reader;
// it cannot write.
type Store struct {
	base    *url.URL
	hc      *http.Client
	cfg     Config
	retries int
	// idle bounds the wait for the next byte of an answer (idleBody).
	idle time.Duration

	mu sync.Mutex
	// inline holds the small objects (manifests, signatures) a listing
	// carried, so verifying a listing costs no request per entry. They are
	// verified by the caller like any other bytes from the service.
	inline map[string]inlineObject
}

type inlineObject struct {
	b    []byte
	info store.ObjectInfo
}

// maxErrorBody bounds an error answer read from the service, and
// maxJSONBody a JSON answer (a page of 1000 entries with manifests is a
// few MiB).
const (
	maxErrorBody = 64 << 10
	maxJSONBody  = 256 << 20
)

// New checks cfg and builds the client. Nothing is sent yet.
func New(cfg Config) (*Store, error) {
	u, err := url.Parse(cfg.Server)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("--server %q is not a URL; give https://HOST[:PORT] of `ckvault serve`", cfg.Server)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("--server %q: the vault service speaks HTTPS only", cfg.Server)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("--server %q: give only https://HOST[:PORT], without path, query or user", cfg.Server)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case cfg.CertFile != "" && cfg.KeyFile != "":
		c, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	case cfg.CertFile != "" || cfg.KeyFile != "":
		return nil, errors.New("--cert and --key go together: give both, or neither")
	}
	if cfg.CertFile == "" && cfg.Token == "" && cfg.TokenFile == "" {
		return nil, errors.New("no credentials for the vault service: give --cert and --key (client certificate) or --token-file (bearer token)")
	}
	tr := &http.Transport{
		TLSClientConfig: tc,
		Proxy:           http.ProxyFromEnvironment,
		// HTTP/1.1: each stream gets its own connection, so the service
		// encrypts concurrent downloads on as many cores as it has. Over
		// HTTP/2 they share one connection, whose frames one goroutine
		// writes and encrypts (BenchmarkServiceFetch: ~35 % slower).
		ForceAttemptHTTP2:     false,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   8,
	}
	if cfg.Purpose != "" && cfg.Purpose != PurposeRestore {
		return nil, fmt.Errorf("remote: unknown purpose %q", cfg.Purpose)
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	u.Path = ""
	return &Store{base: u, hc: &http.Client{Transport: tr}, cfg: cfg, retries: cfg.Retries, idle: idleTimeout, inline: map[string]inlineObject{}}, nil
}

// idleTimeout is how long the client waits for the next byte of an
// answer. The service gives up on a stream that cannot progress for a
// minute (its write deadline), so twice that is never a healthy service's
// pause; over HTTP/1.1 nothing else tells the client that a connection is
// dead, or that a (malicious) service stalls on purpose.
const idleTimeout = 2 * time.Minute

// idleBody is an answer's body whose Read gives up after d without a
// byte: it closes the body (which ends the Read) and returns an error, so
// that a download resumes with Range as after a broken connection, and a
// listing fails, instead of waiting for ever.
type idleBody struct {
	rc    io.ReadCloser
	d     time.Duration
	t     *time.Timer
	fired atomic.Bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.t == nil {
		b.t = time.AfterFunc(b.d, func() { b.fired.Store(true); b.rc.Close() })
	} else {
		b.t.Reset(b.d)
	}
	n, err := b.rc.Read(p)
	b.t.Stop()
	if b.fired.Load() {
		return n, fmt.Errorf("the service sent nothing for %s", b.d)
	}
	return n, err
}

func (b *idleBody) Close() error {
	if b.t != nil {
		b.t.Stop()
	}
	return b.rc.Close()
}

// Describe names the service.
func (s *Store) Describe() string { return "ckvault serve " + s.base.String() }

func (s *Store) token() (string, error) {
	if s.cfg.Token != "" {
		return s.cfg.Token, nil
	}
	if s.cfg.TokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(s.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// StatusError is an error answer from the service.
type StatusError struct {
	Code int
	// Body is the service's error message.
	Body Error
	URL  string
}

func (e *StatusError) Error() string {
	msg := e.Body.Error
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("%s: %d %s", e.URL, e.Code, msg)
}

func (e *StatusError) Unwrap() error {
	if e.Code == http.StatusNotFound {
		return store.ErrNotExist
	}
	if e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden {
		return store.ErrPermanent
	}
	return nil
}

// do sends one request, retrying 429 and 503 answers (honouring
// Retry-After, at most 30 s each) and transport errors before any answer.
func (s *Store) do(ctx context.Context, method, path string, q url.Values, hdr http.Header) (*http.Response, error) {
	return s.doBody(ctx, method, path, q, hdr, nil)
}

// doBody is do with a request body (JSON), sent again on each retry.
func (s *Store) doBody(ctx context.Context, method, path string, q url.Values, hdr http.Header, body []byte) (*http.Response, error) {
	u := *s.base
	u.Path = path
	u.RawQuery = q.Encode()
	var lastErr error
	for attempt := 0; attempt <= s.retries; attempt++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		tok, err := s.token()
		if err != nil {
			return nil, err
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := s.hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = fmt.Errorf("reaching %s: %w", s.Describe(), err)
			if !sleep(ctx, backoff(attempt)) {
				return nil, ctx.Err()
			}
			continue
		}
		if resp.StatusCode < 300 {
			resp.Body = &idleBody{rc: resp.Body, d: s.idle}
			return resp, nil
		}
		se := readError(resp, u.Path)
		if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
			return nil, se
		}
		lastErr = se
		wait := backoff(attempt)
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && ra >= 0 {
			wait = min(time.Duration(ra)*time.Second, 30*time.Second)
		}
		if !sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
	return nil, lastErr
}

func backoff(attempt int) time.Duration {
	return min(time.Duration(200<<attempt)*time.Millisecond, 10*time.Second)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func readError(resp *http.Response, path string) *StatusError {
	defer resp.Body.Close()
	se := &StatusError{Code: resp.StatusCode, URL: path}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(b, &se.Body) != nil || se.Body.Error == "" {
		se.Body.Error = strings.TrimSpace(string(b))
	}
	return se
}

func (s *Store) getJSON(ctx context.Context, path string, q url.Values, v any) error {
	resp, err := s.do(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return DecodeJSON(resp.Body, v)
}

// DecodeJSON reads one bounded JSON value; the service's answers are
// untrusted input.
func DecodeJSON(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, maxJSONBody+1))
	if err != nil {
		return fmt.Errorf("reading the service's answer: %w", err)
	}
	if len(b) > maxJSONBody {
		return fmt.Errorf("the service's answer exceeds %d bytes", maxJSONBody)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("the service's answer is not the JSON expected: %w", err)
	}
	return nil
}

// Checkpoints returns one page of GET /v1/checkpoints.
func (s *Store) Checkpoints(ctx context.Context, q url.Values) (*CheckpointList, error) {
	var l CheckpointList
	if err := s.getJSON(ctx, APIVersion+"/checkpoints", q, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// List implements store.Reader for checkpoint objects: they come from the
// service's index (GET /v1/checkpoints, with prefix and cursor), whatever
// the prefix — a listing of audit/ or audit/<pod>/ is one of a Kubernetes
// namespace named "audit". Audit segments are listed by ListSegments,
// which audit.ReadStore prefers. The small objects a listing carries are
// kept for Open.
func (s *Store) List(ctx context.Context, prefix, startAfter string, limit int) ([]store.ObjectInfo, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if startAfter != "" {
		q.Set("cursor", startAfter)
	}
	l, err := s.Checkpoints(ctx, q)
	if err != nil {
		return nil, "", err
	}
	var out []store.ObjectInfo
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range l.Items {
		if !strings.HasPrefix(e.Base, prefix) {
			return nil, "", fmt.Errorf("%s answered %s for a listing of %q: a misbehaving service", s.Describe(), e.Base, prefix)
		}
		for _, o := range e.Objects {
			if !strings.HasPrefix(o.Key, e.Base) {
				return nil, "", fmt.Errorf("%s listed object %s under checkpoint %s: a misbehaving service", s.Describe(), o.Key, e.Base)
			}
			info := store.ObjectInfo{Key: o.Key, Size: o.Size, LastModified: o.LastModified}
			out = append(out, info)
			sfx := o.Key[len(e.Base):]
			b, ok := e.Signatures[sfx]
			if sfx == ".manifest.json" {
				b, ok = e.Manifest, e.Manifest != nil
			}
			if ok {
				info.Size = int64(len(b))
				s.inline[o.Key] = inlineObject{b: b, info: info}
			}
		}
	}
	return out, l.Next, nil
}

// ListSegments lists the exported audit segments (GET /v1/audit/segments,
// verb audit); it implements audit.SegmentLister.
func (s *Store) ListSegments(ctx context.Context, startAfter string, limit int) ([]store.ObjectInfo, string, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if startAfter != "" {
		q.Set("after", startAfter)
	}
	var l ObjectList
	if err := s.getJSON(ctx, APIVersion+"/audit/segments", q, &l); err != nil {
		return nil, "", err
	}
	out := make([]store.ObjectInfo, 0, len(l.Items))
	for _, o := range l.Items {
		if !strings.HasPrefix(o.Key, audit.SegmentPrefix) {
			return nil, "", fmt.Errorf("%s listed %s as an audit segment: a misbehaving service", s.Describe(), o.Key)
		}
		out = append(out, store.ObjectInfo{Key: o.Key, Size: o.Size, LastModified: o.LastModified})
	}
	return out, l.Next, nil
}

func objectPath(key string) string { return APIVersion + "/objects/" + key }

// objectQuery marks object reads with the client's purpose.
func (s *Store) objectQuery() url.Values {
	if s.cfg.Purpose == "" {
		return nil
	}
	return url.Values{"purpose": {s.cfg.Purpose}}
}

// Stat implements store.Reader (HEAD).
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	resp, err := s.do(ctx, http.MethodHead, objectPath(key), s.objectQuery(), nil)
	if err != nil {
		return store.ObjectInfo{}, fmt.Errorf("%s: %w", key, err)
	}
	resp.Body.Close()
	return infoOf(key, resp)
}

func infoOf(key string, resp *http.Response) (store.ObjectInfo, error) {
	info := store.ObjectInfo{Key: key, Size: resp.ContentLength}
	if resp.StatusCode == http.StatusPartialContent {
		_, _, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return info, err
		}
		info.Size = total
	}
	if info.Size < 0 {
		return info, fmt.Errorf("%s: the service did not say the object's size", key)
	}
	if t, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		info.LastModified = t
	}
	return info, nil
}

// parseContentRange reads "bytes FIRST-LAST/TOTAL": a range of at least
// one byte inside an object of TOTAL bytes.
func parseContentRange(h string) (first, last, total int64, err error) {
	spec, ok := strings.CutPrefix(h, "bytes ")
	rng, tot, ok2 := strings.Cut(spec, "/")
	a, b, ok3 := strings.Cut(rng, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, 0, fmt.Errorf("the service answered a malformed Content-Range %q", h)
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	total, err3 := strconv.ParseInt(tot, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || total <= last {
		return 0, 0, 0, fmt.Errorf("the service answered a malformed Content-Range %q", h)
	}
	return first, last, total, nil
}

// Open implements store.Reader: the bytes a listing carried, or a stream
// that resumes with Range where a broken connection left it.
func (s *Store) Open(ctx context.Context, key string) (store.Object, error) {
	s.mu.Lock()
	in, ok := s.inline[key]
	s.mu.Unlock()
	if ok {
		return &bytesObject{Reader: bytes.NewReader(in.b), info: in.info}, nil
	}
	o := &object{s: s, ctx: ctx, key: key}
	if err := o.open(0); err != nil {
		return nil, err
	}
	return o, nil
}

type bytesObject struct {
	*bytes.Reader
	info store.ObjectInfo
}

func (b *bytesObject) Close() error           { return nil }
func (b *bytesObject) Info() store.ObjectInfo { return b.info }

// object streams one object from the service.
type object struct {
	s       *Store
	ctx     context.Context
	key     string
	info    store.ObjectInfo
	body    io.ReadCloser
	off     int64 // offset of the next byte Read returns
	resumes int
}

func (o *object) open(off int64) error {
	var hdr http.Header
	if off > 0 {
		hdr = http.Header{"Range": {fmt.Sprintf("bytes=%d-", off)}}
	}
	resp, err := o.s.do(o.ctx, http.MethodGet, objectPath(o.key), o.s.objectQuery(), hdr)
	if err != nil {
		return fmt.Errorf("%s: %w", o.key, err)
	}
	info, err := infoOf(o.key, resp)
	if err != nil {
		resp.Body.Close()
		return err
	}
	// The stream's bytes are believed only at the offsets the answer
	// announced, and as asked: from off (0 without a Range) to the end.
	// A 206 that starts elsewhere, or announces less than the rest while
	// sending more, would place bytes where they do not belong.
	if off > 0 || resp.StatusCode == http.StatusPartialContent {
		first, last, _, err := parseContentRange(resp.Header.Get("Content-Range"))
		if resp.StatusCode != http.StatusPartialContent || err != nil || first != off || last != info.Size-1 {
			resp.Body.Close()
			return fmt.Errorf("%s: asked the service for bytes %d to the end, it answered %s %q", o.key, off, resp.Status, resp.Header.Get("Content-Range"))
		}
	}
	if off > 0 {
		if o.info.Size != info.Size {
			resp.Body.Close()
			return fmt.Errorf("%s: the object's size changed from %d to %d bytes while resuming", o.key, o.info.Size, info.Size)
		}
	}
	o.info, o.body, o.off = info, resp.Body, off
	return nil
}

func (o *object) Info() store.ObjectInfo { return o.info }

// Read reads on; when the connection breaks before the end it reopens at
// the current offset with Range (up to Config.Retries times).
func (o *object) Read(p []byte) (int, error) {
	if o.off >= o.info.Size {
		return 0, io.EOF
	}
	if o.body == nil {
		if err := o.open(o.off); err != nil {
			return 0, err
		}
	}
	// Never more than the size the answer settled on: a service that
	// sends more than it announced gets its surplus ignored, not believed.
	if rest := o.info.Size - o.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := o.body.Read(p)
	o.off += int64(n)
	if o.off >= o.info.Size && err == nil {
		// Every byte is here: read the answer's end too, so the stream
		// ends as the service ends it (after its outcome record) rather
		// than being reset by our Close while its last write is in
		// flight — which the service would record as a failed download.
		err = drainEnd(o.body)
	}
	if err == nil || n > 0 && err != io.EOF {
		return n, nil
	}
	if err == io.EOF && o.off >= o.info.Size {
		return n, io.EOF
	}
	// A short body or a broken connection: resume.
	o.body.Close()
	o.body = nil
	if o.ctx.Err() != nil {
		return n, o.ctx.Err()
	}
	if o.resumes >= o.s.retries {
		return n, fmt.Errorf("%s: download broke at byte %d of %d and %d resumptions failed: %v", o.key, o.off, o.info.Size, o.resumes, err)
	}
	o.resumes++
	return n, nil
}

// Seek moves the offset; the next Read reopens there with Range.
func (o *object) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += o.off
	case io.SeekEnd:
		offset += o.info.Size
	}
	if offset < 0 {
		return 0, fmt.Errorf("%s: seek to negative offset", o.key)
	}
	if offset != o.off && o.body != nil {
		o.body.Close()
		o.body = nil
	}
	o.off = offset
	return offset, nil
}

// ReadAt reads with a ranged request of its own.
func (o *object) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.info.Size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), o.info.Size) - 1
	resp, err := o.s.do(o.ctx, http.MethodGet, objectPath(o.key), o.s.objectQuery(), http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, end)}})
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	// As in open: bytes are believed only where the answer puts them,
	// and only the range asked for.
	if first, last, total, err := parseContentRange(resp.Header.Get("Content-Range")); resp.StatusCode != http.StatusPartialContent || err != nil ||
		first != off || last != end || total != o.info.Size {
		return 0, fmt.Errorf("%s: asked the service for bytes %d-%d of %d, it answered %s %q", o.key, off, end, o.info.Size, resp.Status, resp.Header.Get("Content-Range"))
	}
	n, err := io.ReadFull(resp.Body, p[:end-off+1])
	if err == nil {
		drainEnd(resp.Body) // as in Read
	}
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

// drainEnd reads what is left of an answer whose announced bytes have all
// arrived: normally nothing but its end (io.EOF, returned as such). A
// service that sends more than it announced is not read further.
func drainEnd(body io.Reader) error {
	var b [1]byte
	for range 100 { // a Read may return (0, nil); a body will not forever
		n, err := body.Read(b[:])
		if err != nil || n > 0 {
			return err
		}
	}
	return nil
}

func (o *object) Close() error {
	if o.body != nil {
		return o.body.Close()
	}
	return nil
}

var (
	_ store.Reader        = (*Store)(nil)
	_ audit.SegmentLister = (*Store)(nil) // audit.ReadStore lists segments apart from List
)
