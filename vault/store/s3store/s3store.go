// Package s3store keeps the vault in an S3-compatible bucket (AWS S3,
// MinIO, versitygw, ...) through minio-go, over TLS only.
//
// # Transport
//
// The store URL is https://HOST[:PORT]/BUCKET[/PREFIX]. TLS 1.2 or later is
// required and the server's certificate is verified against the system
// roots plus an optional CA bundle; a client certificate may be presented
// (mTLS). http:// is refused unless Config.Insecure is set, and then every
// New logs a warning.
//
// # Credentials
//
// Static keys from files, else minio-go's chain: the AWS_* environment,
// the shared credentials file, then IAM (EC2/ECS metadata and web identity
// — IRSA's AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN). Secrets appear in no
// error, log line or Describe.
//
// # Bounded memory
//
// Put requires the exact size. Objects up to MultipartThreshold (one part,
// 16 MiB, by default) go in one streaming PUT with no buffer at all; larger
// ones are multipart uploads that read into Concurrency buffers of PartSize
// bytes and upload them in parallel: 2 × 16 MiB by default, so peak extra
// memory per upload is 32 MiB whatever the object's size.
//
// # Proof of completeness
//
// Put computes CRC-64/NVME over exactly the bytes it hands to minio-go, asks
// the server for a full-object CRC64NVME checksum (which S3 defines for
// multipart uploads too, unlike SHA-256, whose multipart form is a
// composite "checksum of checksums"), and after the upload reads back the
// uploaded version's size and checksum with a HEAD request. Both must match
// or Put fails with store.ErrIncomplete. The mismatching version is then
// deleted if its retention allows; otherwise it stays, but Put's error means
// it never counts as stored. A server that refuses a part because the bytes
// it received do not match the part's checksum (a corrupting middlebox) is
// reported as store.ErrIncomplete too.
//
// # WORM
//
// With retention, objects are written with the Object Lock mode and
// retain-until date (and legal hold) in the same PUT. Check verifies that
// the bucket has Object Lock and versioning enabled. Because S3 lets anyone
// with write access shadow a locked version with a new one, or hide it under
// a delete marker, Put and Delete (of the current version) refuse with
// store.ErrLocked when the current version is locked; the server itself
// enforces the lock on the locked version.
//
// # Retries
//
// minio-go retries single requests briefly. On top of that, operations
// other than Put retry transient failures (network errors, 5xx, SlowDown)
// with bounded exponential backoff; Put retries the whole upload only when
// its reader can seek back (io.Seeker), since a consumed stream cannot be
// replayed — the caller retries with a fresh stream. Permanent failures
// (bad credentials, untrusted certificate, missing bucket, access denied)
// are never retried and wrap store.ErrPermanent with the endpoint, the
// bucket and the fix.
package s3store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/crc64nvme"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Defaults for Config.
const (
	DefaultPartSize    = 16 << 20
	DefaultConcurrency = 2
	defaultAttempts    = 4
	defaultBaseDelay   = 250 * time.Millisecond
	maxDelay           = 8 * time.Second
)

// Config configures a Store. URL is required; the rest have defaults.
type Config struct {
	// URL is https://HOST[:PORT]/BUCKET[/PREFIX].
	URL string
	// Region defaults to us-east-1.
	Region string
	// PathStyle is "auto" (default), "path" or "virtual".
	PathStyle string
	// CAFile is an extra PEM CA bundle trusted besides the system roots.
	CAFile string
	// ClientCert and ClientKey are a PEM client certificate for mTLS.
	ClientCert, ClientKey string
	// AccessKeyFile and SecretKeyFile hold static credentials (one line
	// each). When empty, the environment / IAM chain is used.
	AccessKeyFile, SecretKeyFile string
	// Credentials overrides both (tests, embedding programs).
	Credentials *credentials.Credentials
	// Insecure permits plain http://. Development only: logged as a
	// warning at every New.
	Insecure bool
	// RequireObjectLock makes Check fail unless the bucket has Object
	// Lock and versioning enabled.
	RequireObjectLock bool
	// PartSize (default 16 MiB, minimum 5 MiB) and Concurrency (default
	// 2) bound each multipart upload's buffers to PartSize × Concurrency
	// bytes.
	PartSize    uint64
	Concurrency uint
	// MultipartThreshold is the largest object sent as one streaming PUT
	// (no buffer at all, but no per-part retry and, in this package's
	// benchmark against MinIO, slower: minio-go frames the body in 64 KiB
	// aws-chunked chunks); larger objects go multipart. Default (0 or
	// less): PartSize. At most 5 GiB, S3's single-PUT limit.
	MultipartThreshold int64
	// Attempts bounds tries per operation (default 4); BaseDelay is the
	// first backoff (default 250ms), doubling up to 8s.
	Attempts  int
	BaseDelay time.Duration
	// Logger receives warnings (default slog.Default()).
	Logger *slog.Logger
	// Transport, if set, replaces the TLS transport built from CAFile and
	// the client certificate (tests that interpose a proxy still set
	// CAFile; this is for programs with their own dialer).
	Transport http.RoundTripper
}

// Store is an S3 bucket prefix.
type Store struct {
	c         *minio.Client
	core      minio.Core
	bucket    string
	prefix    string // "" or ends in "/"
	endpoint  string // scheme://host[:port], for messages
	cfg       Config
	partSize  uint64
	threads   uint
	threshold int64
	attempts  int
	baseDelay time.Duration
}

var (
	_ store.Store   = (*Store)(nil)
	_ store.Checker = (*Store)(nil)
	_ store.Janitor = (*Store)(nil)
)

// ParseURL splits a store URL into endpoint (scheme://host[:port]), bucket
// and prefix ("" or ending in "/").
func ParseURL(raw string) (u *url.URL, bucket, prefix string, err error) {
	u, err = url.Parse(raw)
	if err != nil {
		// url.Error quotes the input, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, "", "", fmt.Errorf("store url is not a valid URL: %v", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, "", "", fmt.Errorf("store url: scheme %q: want https://HOST[:PORT]/BUCKET[/PREFIX] (or file:/// for a local store)", u.Scheme)
	}
	if u.User != nil {
		return nil, "", "", fmt.Errorf("store url %s: credentials in the URL are not allowed; use accessKeyFile/secretKeyFile or the AWS_* environment", safeURL(u))
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, "", "", fmt.Errorf("store url %q: want https://HOST[:PORT]/BUCKET[/PREFIX]", safeURL(u))
	}
	p := strings.Trim(u.Path, "/")
	if p == "" {
		return nil, "", "", fmt.Errorf("store url %q: no bucket; want https://HOST[:PORT]/BUCKET[/PREFIX]", safeURL(u))
	}
	bucket, prefix, _ = strings.Cut(p, "/")
	if prefix != "" {
		if err := store.ValidKey(prefix); err != nil {
			return nil, "", "", fmt.Errorf("store url %q: bad prefix: %v", safeURL(u), err)
		}
		prefix += "/"
	}
	return u, bucket, prefix, nil
}

// safeURL renders u for an error message without anything that could be a
// credential: user info and opaque parts are dropped.
func safeURL(u *url.URL) string {
	v := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	if u.Opaque != "" {
		return u.Scheme + ":..."
	}
	return v.String()
}

// New makes a Store. It does not contact the server: call Check for that.
func New(cfg Config) (*Store, error) {
	u, bucket, prefix, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, store.ErrPermanent)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	endpoint := u.Scheme + "://" + u.Host
	if u.Scheme == "http" {
		if !cfg.Insecure {
			return nil, fmt.Errorf("store %s: plain http is refused: use https (or set store.insecure: true for development only): %w", endpoint, store.ErrPermanent)
		}
		log.Warn("object store over plain HTTP: checkpoints and credentials cross the network unprotected; development only", "endpoint", endpoint, "bucket", bucket)
	}
	s := &Store{bucket: bucket, prefix: prefix, endpoint: endpoint, cfg: cfg,
		partSize: cfg.PartSize, threads: cfg.Concurrency, attempts: cfg.Attempts, baseDelay: cfg.BaseDelay}
	if s.partSize == 0 {
		s.partSize = DefaultPartSize
	}
	if s.partSize < 5<<20 {
		return nil, fmt.Errorf("store %s: part size %d is below S3's 5 MiB minimum: %w", s.Describe(), s.partSize, store.ErrPermanent)
	}
	if s.threads == 0 {
		s.threads = DefaultConcurrency
	}
	if s.threshold = cfg.MultipartThreshold; s.threshold < int64(s.partSize) {
		s.threshold = int64(s.partSize)
	}
	if s.threshold > 5<<30 {
		return nil, fmt.Errorf("store %s: multipart threshold %d exceeds S3's 5 GiB single-PUT limit: %w", s.Describe(), s.threshold, store.ErrPermanent)
	}
	if s.attempts <= 0 {
		s.attempts = defaultAttempts
	}
	if s.baseDelay <= 0 {
		s.baseDelay = defaultBaseDelay
	}

	tr := cfg.Transport
	if tr == nil {
		tlsCfg, err := tlsConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("store %s: %v: %w", s.Describe(), err, store.ErrPermanent)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = tlsCfg
		t.Proxy = http.ProxyFromEnvironment
		t.ResponseHeaderTimeout = 2 * time.Minute
		t.MaxIdleConnsPerHost = 16
		// minio-go already chooses checksums; transparent gzip would only
		// get in the way of ranged reads.
		t.DisableCompression = true
		tr = t
	}
	tr = createOnlyTransport{tr}
	creds, err := credentialsFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("store %s: %v: %w", s.Describe(), err, store.ErrPermanent)
	}
	lookup := minio.BucketLookupAuto
	switch cfg.PathStyle {
	case "", "auto":
	case "path":
		lookup = minio.BucketLookupPath
	case "virtual":
		lookup = minio.BucketLookupDNS
	default:
		return nil, fmt.Errorf("store %s: pathStyle %q: want auto, path or virtual: %w", s.Describe(), cfg.PathStyle, store.ErrPermanent)
	}
	region := cfg.Region
	if region == "" {
		region = "us-east-1"
	}
	c, err := minio.New(u.Host, &minio.Options{
		Creds:           creds,
		Secure:          u.Scheme == "https",
		Transport:       tr,
		Region:          region,
		BucketLookup:    lookup,
		TrailingHeaders: true,
		MaxRetries:      2,
	})
	if err != nil {
		return nil, fmt.Errorf("store %s: %v: %w", s.Describe(), err, store.ErrPermanent)
	}
	c.SetAppInfo("ckvault", "1")
	s.c = c
	s.core = minio.Core{Client: c}
	return s, nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA bundle: %v", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA bundle %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.ClientCert == "") != (cfg.ClientKey == "") {
		return nil, errors.New("clientCert and clientKey must be given together")
	}
	if cfg.ClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			// The error of LoadX509KeyPair never quotes key material.
			return nil, fmt.Errorf("client certificate %s / key %s: %v", cfg.ClientCert, cfg.ClientKey, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func credentialsFor(cfg Config) (*credentials.Credentials, error) {
	if cfg.Credentials != nil {
		return cfg.Credentials, nil
	}
	if (cfg.AccessKeyFile == "") != (cfg.SecretKeyFile == "") {
		return nil, errors.New("accessKeyFile and secretKeyFile must be given together")
	}
	if cfg.AccessKeyFile != "" {
		ak, err := readSecretFile(cfg.AccessKeyFile, "access key")
		if err != nil {
			return nil, err
		}
		sk, err := readSecretFile(cfg.SecretKeyFile, "secret key")
		if err != nil {
			return nil, err
		}
		return credentials.NewStaticV4(ak, sk, ""), nil
	}
	return credentials.NewChainCredentials([]credentials.Provider{
		&credentials.EnvAWS{},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{}, // EC2/ECS metadata and web identity (IRSA)
	}), nil
}

// readSecretFile reads a one-line secret. Errors name the file, never its
// content.
func readSecretFile(name, what string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("read %s file: %v", what, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" || strings.ContainsAny(v, "\n\r") {
		return "", fmt.Errorf("%s file %s must hold exactly one non-empty line", what, name)
	}
	if st, err := os.Stat(name); err == nil && st.Mode().Perm()&0o077 != 0 {
		slog.Warn("credential file is readable by group or others; chmod 600 it", "file", name)
	}
	return v, nil
}

// Describe names the store without credentials.
func (s *Store) Describe() string {
	d := s.endpoint + "/" + s.bucket
	if s.prefix != "" {
		d += "/" + strings.TrimSuffix(s.prefix, "/")
	}
	return "s3 " + d
}

func (s *Store) fullKey(key string) string { return s.prefix + key }

// Check verifies the bucket is reachable with these credentials and, when
// RequireObjectLock is set, that it has Object Lock and versioning.
func (s *Store) Check(ctx context.Context) error {
	// A listing (GET, with an error body naming the problem, unlike HEAD)
	// proves the bucket exists and the identity may read the prefix.
	if _, _, err := s.List(ctx, "", "", 1); err != nil {
		return err
	}
	if !s.cfg.RequireObjectLock {
		return nil
	}
	var enabled string
	err := s.retry(ctx, func() error {
		var err error
		enabled, _, _, _, err = s.c.GetObjectLockConfig(ctx, s.bucket)
		return err
	})
	if err != nil && s3err(err).Code != "ObjectLockConfigurationNotFoundError" {
		return s.wrap("check object lock", "", err)
	}
	if enabled != "Enabled" {
		return fmt.Errorf("store %s: retention is configured but bucket %q has no Object Lock (create the bucket with Object Lock enabled, or remove store.objectLock): %w", s.Describe(), s.bucket, store.ErrPermanent)
	}
	var vc minio.BucketVersioningConfiguration
	err = s.retry(ctx, func() error {
		var err error
		vc, err = s.c.GetBucketVersioning(ctx, s.bucket)
		return err
	})
	if err != nil {
		return s.wrap("check versioning", "", err)
	}
	if !vc.Enabled() {
		return fmt.Errorf("store %s: bucket %q has Object Lock but versioning is %q (enable versioning): %w", s.Describe(), s.bucket, vc.Status, store.ErrPermanent)
	}
	return nil
}

// hashingReader counts and hashes exactly what minio-go reads. It has only
// a Read method on purpose: a ReaderAt would make minio-go read parts in
// parallel through its own, larger, buffers.
type hashingReader struct {
	r io.Reader
	h hash.Hash64
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func encodeSum(v uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return base64.StdEncoding.EncodeToString(b[:])
}

// Put uploads exactly size bytes and proves the server holds them.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	if err := store.ValidKey(key); err != nil {
		return store.ObjectInfo{}, err
	}
	if size < 0 {
		return store.ObjectInfo{}, fmt.Errorf("store %s: put %q: negative size %d: the exact size is required", s.Describe(), key, size)
	}
	if err := opts.Retention.Validate(); err != nil {
		return store.ObjectInfo{}, fmt.Errorf("store %s: put %q: %v", s.Describe(), key, err)
	}
	if opts.IfAbsent {
		if err := s.checkAbsent(ctx, key); err != nil {
			return store.ObjectInfo{}, err
		}
	} else if err := s.checkUnlocked(ctx, key, "overwrite"); err != nil {
		return store.ObjectInfo{}, err
	}
	seeker, _ := r.(io.Seeker)
	var start int64
	if seeker != nil {
		var err error
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			seeker = nil
		}
	}
	var lastErr error
	for attempt := 0; attempt < s.attempts; attempt++ {
		if attempt > 0 {
			if seeker == nil {
				break
			}
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				break
			}
			if err := sleep(ctx, s.backoff(attempt)); err != nil {
				break
			}
		}
		oi, err := s.putOnce(ctx, key, r, size, opts)
		if err == nil || !s.transient(err) {
			return oi, err
		}
		lastErr = err
	}
	return store.ObjectInfo{}, lastErr
}

// maxParts is S3's limit on the parts of one multipart upload.
const maxParts = 10000

// partSizeFor is the configured part size, raised (in whole MiB) when an
// object is so large that it would otherwise need more than maxParts parts:
// memory then grows with the object only beyond partSize × 10,000 (78 GiB
// at 8 MiB parts), and the upload still succeeds.
func partSizeFor(size int64, partSize uint64) uint64 {
	if size <= 0 || uint64(size) <= partSize*maxParts {
		return partSize
	}
	const mib = 1 << 20
	need := (uint64(size) + maxParts - 1) / maxParts
	return (need + mib - 1) / mib * mib
}

func (s *Store) putOnce(ctx context.Context, key string, r io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	hr := &hashingReader{r: io.LimitReader(r, size), h: crc64nvme.New()}
	popts := minio.PutObjectOptions{
		ContentType: opts.ContentType,
		Checksum:    minio.ChecksumCRC64NVME,
		PartSize:    partSizeFor(size, s.partSize),
	}
	switch {
	case size <= s.threshold:
		// One streaming PUT: minio-go sends the body as it reads it,
		// with the CRC64NVME in a trailer.
		popts.DisableMultipart = true
	case s.threads > 1:
		// NumThreads buffers of PartSize, filled serially from hr and
		// uploaded in parallel: the memory bound in the package doc.
		popts.ConcurrentStreamParts = true
		popts.NumThreads = s.threads
	default:
		popts.NumThreads = 1
	}
	if m := opts.Retention.Mode; m != "" {
		popts.Mode = minio.RetentionMode(strings.ToUpper(m))
		popts.RetainUntilDate = opts.Retention.Until.UTC()
	}
	if opts.Retention.LegalHold {
		popts.LegalHold = minio.LegalHoldEnabled
	}
	if opts.IfAbsent {
		// If-None-Match: * makes the server itself refuse an existing key
		// (412), closing the window between checkAbsent and this upload
		// on servers that support conditional writes.
		popts.SetMatchETagExcept("*")
	}
	fk := s.fullKey(key)
	if opts.IfAbsent {
		ctx = context.WithValue(ctx, createOnlyKey{}, true)
	}
	info, err := s.c.PutObject(ctx, s.bucket, fk, hr, size, popts)
	if err != nil {
		werr := s.wrap("put", key, err)
		if hr.n == size && !errors.Is(werr, store.ErrPermanent) {
			// Every byte was sent: the server may have stored the object
			// and the response been lost (minio-go's retry of the
			// completion then meets ErrExists or NoSuchUpload). If what
			// the key holds is exactly what was sent, the Put succeeded;
			// a one-pass stream could not be sent again anyway.
			if oi, ok := s.landed(ctx, key, size, encodeSum(hr.h.Sum64())); ok {
				return oi, nil
			}
		}
		return store.ObjectInfo{}, werr
	}
	if hr.n != size {
		s.discard(key, info.VersionID)
		return store.ObjectInfo{}, fmt.Errorf("store %s: put %q: reader ended after %d of %d bytes", s.Describe(), key, hr.n, size)
	}
	var one [1]byte
	if n, _ := io.ReadFull(r, one[:]); n > 0 {
		s.discard(key, info.VersionID)
		return store.ObjectInfo{}, fmt.Errorf("store %s: put %q: reader has more than %d bytes", s.Describe(), key, size)
	}
	local := encodeSum(hr.h.Sum64())

	// Proof: what does the server hold under this version?
	var st minio.ObjectInfo
	err = s.retry(ctx, func() error {
		var err error
		st, err = s.c.StatObject(ctx, s.bucket, fk, minio.StatObjectOptions{VersionID: info.VersionID, Checksum: true})
		return err
	})
	if err != nil {
		return store.ObjectInfo{}, s.wrap("verify upload of", key, err)
	}
	var problem string
	switch {
	case st.Size != size:
		problem = fmt.Sprintf("server holds %d bytes, %d were sent", st.Size, size)
	case size == 0:
		// minio-go sends no checksum with an empty body and servers
		// store none; an empty object is proven by its size alone.
	case st.ChecksumCRC64NVME == "" && info.ChecksumCRC64NVME == "":
		problem = "server reports no CRC64NVME checksum, so the copy cannot be proven (the server must support S3 additional checksums)"
	case st.ChecksumCRC64NVME != "" && st.ChecksumCRC64NVME != local:
		problem = fmt.Sprintf("server's CRC64NVME %s differs from the %s computed over the bytes sent", st.ChecksumCRC64NVME, local)
	case info.ChecksumCRC64NVME != "" && info.ChecksumCRC64NVME != local:
		problem = fmt.Sprintf("upload response's CRC64NVME %s differs from the %s computed over the bytes sent", info.ChecksumCRC64NVME, local)
	case st.ChecksumMode != "" && !strings.EqualFold(st.ChecksumMode, "FULL_OBJECT"):
		problem = fmt.Sprintf("server reports a %s checksum, not a full-object one", st.ChecksumMode)
	}
	if problem != "" {
		note := s.discard(key, info.VersionID)
		return store.ObjectInfo{}, fmt.Errorf("store %s: put %q: %s; %s: %w", s.Describe(), key, problem, note, store.ErrIncomplete)
	}
	oi := s.info(key, st)
	oi.Checksum = store.Checksum{Algorithm: store.ChecksumCRC64NVME, Value: local}
	return oi, nil
}

// landed reports whether the current object under key is the one a Put
// whose response was lost sent: the same size and the same full-object
// CRC64NVME. It never removes anything (the object may be someone else's).
func (s *Store) landed(ctx context.Context, key string, size int64, local string) (store.ObjectInfo, bool) {
	var st minio.ObjectInfo
	err := s.retry(ctx, func() error {
		var err error
		st, err = s.c.StatObject(ctx, s.bucket, s.fullKey(key), minio.StatObjectOptions{Checksum: true})
		return err
	})
	if err != nil || st.IsDeleteMarker || st.Size != size {
		return store.ObjectInfo{}, false
	}
	if size > 0 && (st.ChecksumCRC64NVME != local || (st.ChecksumMode != "" && !strings.EqualFold(st.ChecksumMode, "FULL_OBJECT"))) {
		return store.ObjectInfo{}, false
	}
	oi := s.info(key, st)
	oi.Checksum = store.Checksum{Algorithm: store.ChecksumCRC64NVME, Value: local}
	return oi, true
}

// createOnlyKey marks the context of a create-only Put for
// createOnlyTransport.
type createOnlyKey struct{}

// createOnlyTransport adds If-None-Match: * to the CompleteMultipartUpload
// request (POST ?uploadId=) of a create-only Put. minio-go v7.4.1 sends the
// caller's conditional headers with the initiating request only and drops
// them on completion (completeUploadOpts), yet completion is where S3 and
// versitygw evaluate If-None-Match for a multipart upload (MinIO checks it
// at both): without this an object created by someone else while the parts
// upload would be replaced. The header is sent unsigned, which SigV4
// allows: only the headers SignedHeaders names are signed.
type createOnlyTransport struct{ http.RoundTripper }

func (t createOnlyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPost && r.URL.Query().Has("uploadId") && r.Header.Get("If-None-Match") == "" &&
		r.Context().Value(createOnlyKey{}) != nil {
		r = r.Clone(r.Context())
		r.Header.Set("If-None-Match", "*")
	}
	return t.RoundTripper.RoundTrip(r)
}

// discard removes a version that must not count as stored, and says what
// became of it.
func (s *Store) discard(key, versionID string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.c.RemoveObject(ctx, s.bucket, s.fullKey(key), minio.RemoveObjectOptions{VersionID: versionID})
	if err != nil {
		return fmt.Sprintf("the bad version %q could not be removed (%v) and must be ignored", versionID, redact(err))
	}
	return fmt.Sprintf("the bad version %q was removed", versionID)
}

func (s *Store) info(key string, st minio.ObjectInfo) store.ObjectInfo {
	oi := store.ObjectInfo{
		Key:          key,
		Size:         st.Size,
		LastModified: st.LastModified,
		VersionID:    st.VersionID,
	}
	if st.ChecksumCRC64NVME != "" {
		oi.Checksum = store.Checksum{Algorithm: store.ChecksumCRC64NVME, Value: st.ChecksumCRC64NVME}
	}
	if v := st.Metadata.Get("X-Amz-Object-Lock-Retain-Until-Date"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			oi.RetainUntil = t
		}
	}
	oi.LegalHold = strings.EqualFold(st.Metadata.Get("X-Amz-Object-Lock-Legal-Hold"), "ON")
	return oi
}

// checkUnlocked refuses to shadow or hide a locked current version.
func (s *Store) checkUnlocked(ctx context.Context, key, op string) error {
	oi, err := s.Stat(ctx, key)
	if errors.Is(err, store.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if oi.LegalHold {
		return fmt.Errorf("store %s: %s %q: legal hold is on: %w", s.Describe(), op, key, store.ErrLocked)
	}
	if time.Now().Before(oi.RetainUntil) {
		return fmt.Errorf("store %s: %s %q: retained until %s: %w", s.Describe(), op, key, oi.RetainUntil.UTC().Format(time.RFC3339), store.ErrLocked)
	}
	return nil
}

// checkAbsent refuses a create-only Put when key has a current version.
func (s *Store) checkAbsent(ctx context.Context, key string) error {
	_, err := s.Stat(ctx, key)
	switch {
	case errors.Is(err, store.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("store %s: create %q: %w", s.Describe(), key, store.ErrExists)
}

// Stat returns the current version's metadata.
func (s *Store) Stat(ctx context.Context, key string) (store.ObjectInfo, error) {
	if err := store.ValidKey(key); err != nil {
		return store.ObjectInfo{}, err
	}
	var st minio.ObjectInfo
	err := s.retry(ctx, func() error {
		var err error
		st, err = s.c.StatObject(ctx, s.bucket, s.fullKey(key), minio.StatObjectOptions{Checksum: true})
		return err
	})
	if err != nil {
		return store.ObjectInfo{}, s.wrap("stat", key, err)
	}
	if st.IsDeleteMarker {
		return store.ObjectInfo{}, fmt.Errorf("store %s: stat %q: %w", s.Describe(), key, store.ErrNotExist)
	}
	return s.info(key, st), nil
}

// Open opens the current version. Reads of the returned object go to the
// version that was current at Open, even if a newer one appears.
func (s *Store) Open(ctx context.Context, key string) (store.Object, error) {
	oi, err := s.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	o, err := s.c.GetObject(ctx, s.bucket, s.fullKey(key), minio.GetObjectOptions{VersionID: oi.VersionID})
	if err != nil {
		return nil, s.wrap("open", key, err)
	}
	return &object{Object: o, info: oi, s: s, key: key}, nil
}

type object struct {
	*minio.Object
	info store.ObjectInfo
	s    *Store
	key  string
}

func (o *object) Info() store.ObjectInfo { return o.info }

func (o *object) Read(p []byte) (int, error) {
	n, err := o.Object.Read(p)
	if err != nil && err != io.EOF {
		err = o.s.wrap("read", o.key, err)
	}
	return n, err
}

func (o *object) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.Object.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = o.s.wrap("read", o.key, err)
	}
	return n, err
}

// List returns one page of current objects under prefix in lexical order.
func (s *Store) List(ctx context.Context, prefix, startAfter string, limit int) ([]store.ObjectInfo, string, error) {
	if err := store.ValidPrefix(prefix); err != nil {
		return nil, "", err
	}
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	sa := ""
	if startAfter != "" {
		sa = s.fullKey(startAfter)
	}
	var out []store.ObjectInfo
	more := false
	err := s.retry(ctx, func() error {
		out, more = out[:0], false
		lctx, cancel := context.WithCancel(ctx)
		defer cancel() // stops minio-go's lister once we have a page
		ch := s.c.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{
			Prefix: s.fullKey(prefix), StartAfter: sa, Recursive: true, MaxKeys: limit + 1,
		})
		for c := range ch {
			if c.Err != nil {
				return c.Err
			}
			k := strings.TrimPrefix(c.Key, s.prefix)
			if store.ValidKey(k) != nil {
				continue // not written by us (e.g. "a//b"): not addressable
			}
			if len(out) == limit {
				more = true
				return nil
			}
			out = append(out, store.ObjectInfo{Key: k, Size: c.Size, LastModified: c.LastModified, VersionID: c.VersionID})
		}
		return nil
	})
	if err != nil {
		return nil, "", s.wrap("list", prefix, err)
	}
	next := ""
	if more {
		next = out[len(out)-1].Key
	}
	return out, next, nil
}

// Delete removes a version, or (versionID "") hides the current one behind
// a delete marker unless it is locked.
func (s *Store) Delete(ctx context.Context, key, versionID string) error {
	if err := store.ValidKey(key); err != nil {
		return err
	}
	if versionID == "" {
		if err := s.checkUnlocked(ctx, key, "delete"); err != nil {
			return err
		}
	}
	err := s.retry(ctx, func() error {
		return s.c.RemoveObject(ctx, s.bucket, s.fullKey(key), minio.RemoveObjectOptions{VersionID: versionID})
	})
	if err != nil {
		if errors.Is(s.wrap("", key, err), store.ErrNotExist) {
			return nil
		}
		return s.wrap("delete", key, err)
	}
	return nil
}

// SetLegalHold places or lifts a legal hold on the current version.
func (s *Store) SetLegalHold(ctx context.Context, key string, on bool) error {
	oi, err := s.Stat(ctx, key)
	if err != nil {
		return err
	}
	st := minio.LegalHoldDisabled
	if on {
		st = minio.LegalHoldEnabled
	}
	err = s.retry(ctx, func() error {
		return s.c.PutObjectLegalHold(ctx, s.bucket, s.fullKey(key), minio.PutObjectLegalHoldOptions{VersionID: oi.VersionID, Status: &st})
	})
	if err != nil {
		e := s.wrap("set legal hold on", key, err)
		if code := s3err(err).Code; code == "InvalidRequest" || strings.Contains(code, "ObjectLock") {
			return fmt.Errorf("%v: %w", e, store.ErrUnsupported)
		}
		return e
	}
	return nil
}

// AbortStaleUploads aborts multipart uploads under the prefix that were
// started more than olderThan ago: the debris of crashed Puts.
//
// MinIO lists incomplete uploads only for an exact object name, not for a
// prefix, so there this finds nothing; MinIO removes stale uploads itself
// (after 24 hours by default, MINIO_API_STALE_UPLOADS_EXPIRY). AWS S3 and
// versitygw list by prefix.
func (s *Store) AbortStaleUploads(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	n := 0
	keyMarker, idMarker := "", ""
	for {
		var res minio.ListMultipartUploadsResult
		err := s.retry(ctx, func() error {
			var err error
			res, err = s.core.ListMultipartUploads(ctx, s.bucket, s.prefix, keyMarker, idMarker, "", 1000)
			return err
		})
		if err != nil {
			return n, s.wrap("list multipart uploads under", strings.TrimSuffix(s.prefix, "/"), err)
		}
		for _, u := range res.Uploads {
			if !u.Initiated.Before(cutoff) {
				continue
			}
			err := s.retry(ctx, func() error {
				return s.core.AbortMultipartUpload(ctx, s.bucket, u.Key, u.UploadID)
			})
			if err != nil && s3err(err).Code != "NoSuchUpload" {
				return n, s.wrap("abort multipart upload of", strings.TrimPrefix(u.Key, s.prefix), err)
			}
			n++
		}
		if !res.IsTruncated {
			return n, nil
		}
		keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
	}
}
