package service

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// StateSubdir is where, under stateDir, the service keeps its audit trail
// and index (apart from a node daemon's on the same machine).
const StateSubdir = "serve"

// Server is a running `ckvault serve`.
type Server struct {
	Service *Service
	Index   *Index
	Trail   *audit.Log
	// Addr is the address it listens on (useful with port 0).
	Addr string

	cfg   *policy.Config
	st    store.Store
	srv   *http.Server
	ln    net.Listener
	log   *slog.Logger
	certs *certReloader
	// retention runs every retention.interval when set.
	retention *Retention
}

// Setup is what Start needs besides the configuration.
type Setup struct {
	Store store.Store
	// Trusted verify manifests (the nodes' keys). AuditTrusted verify
	// audit heads, the service's own included: Trusted plus the keys that
	// sign audit heads only (signing.auditKeys: the service's, the
	// retention job's); nil means Trusted.
	Trusted, AuditTrusted *signing.TrustedKeys
	// Signer signs the trail's heads (the service's signing.key).
	Signer audit.HeadSigner
	// Tokens and Authz override what serve.kubernetes would build (tests
	// may pass their own; nil builds from the configuration).
	Tokens TokenReviewer
	Authz  Authorizer
	// Retention runs GC on the schedule of retention.interval and for
	// /v1/gc; nil (RetentionOff says why) refuses both, and Start refuses
	// a configuration that sets retention.interval without it.
	Retention    *Retention
	RetentionOff string
	// RebuildIndex empties the index before the first refresh.
	RebuildIndex bool
	Logger       *slog.Logger
}

// Start opens the service's state, refreshes the index once and starts
// listening. Stop it with Shutdown.
func Start(ctx context.Context, cfg *policy.Config, su Setup) (*Server, error) {
	sc := cfg.Serve
	if sc == nil {
		return nil, errors.New("the configuration has no serve: section; see deploy/ckvault.example.yaml")
	}
	log := su.Logger
	if log == nil {
		log = slog.Default()
	}
	if r := cfg.Retention; r != nil && r.IntervalDuration() > 0 && su.Retention == nil {
		return nil, fmt.Errorf("retention.interval asks the service to run GC, but it cannot: %s", su.RetentionOff)
	}
	dir := filepath.Join(cfg.StateDir, StateSubdir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the service's state directory %s: %w", dir, err)
	}
	certs, err := newCertReloader(sc.TLSCert, sc.TLSKey)
	if err != nil {
		return nil, err
	}
	var clientCAs *x509.CertPool
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: certs.get,
		ClientAuth:     tls.NoClientCert,
	}
	if sc.ClientCA != "" {
		pem, err := os.ReadFile(sc.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("serve.clientCA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("serve.clientCA %s holds no PEM certificate", sc.ClientCA)
		}
		tlsCfg.ClientCAs = pool // named in the request: clients offer a matching certificate
		// Requested, not verified, at the TLS layer: token callers connect
		// without one, and a certificate that does not chain to the CA is
		// refused by authenticate as a recorded 401, not by a handshake
		// failure no audit record sees. TLS still proves the client holds
		// the certificate's key.
		tlsCfg.ClientAuth = tls.RequestClientCert
		clientCAs = pool
	}

	tokens, authz := su.Tokens, su.Authz
	if k := sc.Kubernetes; k != nil && (tokens == nil || authz == nil && k.Authorize) {
		rc, err := KubeConfig(k.Kubeconfig)
		if err != nil {
			return nil, err
		}
		if tokens == nil {
			tr, err := NewKubeTokenReviewer(rc, k.Audience)
			if err != nil {
				return nil, err
			}
			tokens = tr
		}
		if authz == nil && k.Authorize {
			a, err := NewSARAuthorizer(rc)
			if err != nil {
				return nil, err
			}
			authz = a
		}
	}
	if tokens != nil {
		tokens = newTokenCache(tokens, tokenAllowTTL, tokenDenyTTL)
	}
	if authz == nil {
		authz = RolesAuthorizer{Roles: sc.Roles}
	} else {
		authz = newCachingAuthorizer(authz, decisionAllowTTL, decisionDenyTTL)
	}

	auditTrusted := su.AuditTrusted
	if auditTrusted == nil {
		auditTrusted = su.Trusted
	}
	trail, err := audit.Open(audit.Path(dir), audit.Options{
		Node: cfg.Node, Signer: su.Signer, Verifier: auditTrusted.DER(),
		SignEvery: cfg.Audit.SignEvery, SignInterval: cfg.Audit.SignEveryInterval(), Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("opening the service's audit trail in %s: %w", dir, err)
	}
	idx, err := OpenIndex(filepath.Join(dir, "index.db"), su.Store, su.Trusted, log)
	if err != nil {
		trail.Close()
		return nil, err
	}
	closeAll := func() { idx.Close(); trail.Close() }
	if su.RebuildIndex {
		_, err = idx.Rebuild(ctx)
	} else {
		_, err = idx.Refresh(ctx)
	}
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("building the index from %s: %w", su.Store.Describe(), err)
	}
	var audience string
	if sc.Kubernetes != nil {
		audience = sc.Kubernetes.Audience
	}
	svc, err := New(Options{
		Store: su.Store, Index: idx, Audit: trail, Trail: trail, HeadVerifier: auditTrusted.DER(),
		ClientCAs: clientCAs, Tokens: tokens, Audience: audience, Authz: authz, Holds: su.Store,
		Retention: su.Retention, RetentionOff: su.RetentionOff,
		MaxStreams: sc.MaxStreams, RateLimit: sc.RateLimit, RateBurst: sc.RateBurst,
		Logger: log, Registry: prometheus.NewRegistry(),
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	ln, err := net.Listen("tcp", sc.Listen)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("serve.listen %s: %w", sc.Listen, err)
	}
	srv := &http.Server{
		Handler:           svc,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// No overall WriteTimeout: streams move their write deadline
		// with progress (copyBounded); other answers are small.
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:    func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	s := &Server{Service: svc, Index: idx, Trail: trail, Addr: ln.Addr().String(), cfg: cfg, st: su.Store, srv: srv, ln: ln, log: log, certs: certs,
		retention: su.Retention}
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("the HTTPS server stopped", "err", err)
		}
	}()
	log.Info("serving the vault", "listen", s.Addr, "store", su.Store.Describe(), "entries", idx.Len(),
		"clientCA", sc.ClientCA != "", "tokens", tokens != nil)
	return s, nil
}

// Run keeps the index and the trail's export going until ctx ends, then
// shuts the server down.
func (s *Server) Run(ctx context.Context) error {
	refresh := time.NewTicker(s.cfg.Serve.IndexRefreshEvery())
	defer refresh.Stop()
	export := time.NewTicker(s.cfg.Audit.ExportEvery())
	defer export.Stop()
	var gcTick <-chan time.Time
	if s.retention != nil && s.cfg.Retention != nil && s.cfg.Retention.IntervalDuration() > 0 {
		t := time.NewTicker(s.cfg.Retention.IntervalDuration())
		defer t.Stop()
		gcTick = t.C
	}
	// A retention run can be long: it runs beside the index refresh and
	// the export (Retention allows one run at a time), and is waited for,
	// cancelled, before the trail closes.
	var gcRuns sync.WaitGroup
	for {
		select {
		case <-ctx.Done():
			gcRuns.Wait()
			return s.Shutdown()
		case <-gcTick:
			gcRuns.Go(func() { s.RunRetention(ctx) })
		case <-refresh.C:
			res, err := s.Index.Refresh(ctx)
			if err != nil {
				s.log.Warn("refreshing the index failed; serving the previous one", "err", err)
				s.Service.SetReady(err)
				continue
			}
			s.Service.SetReady(nil)
			if res.Added+res.Updated+res.Removed > 0 {
				s.log.Info("index refreshed", "added", res.Added, "updated", res.Updated, "removed", res.Removed, "unverified", res.Unverified, "took", res.Duration)
			}
		case <-export.C:
			s.Export(ctx)
		}
	}
}

// RetentionActor names the scheduled runs in audit records.
const RetentionActor = "ckvault-serve:retention"

// RunRetention makes one scheduled retention run, audited in the service's
// trail; a failure is logged and the next tick tries again. A run already
// in progress (one a caller asked for) is not doubled.
func (s *Server) RunRetention(ctx context.Context) {
	plan, res, err := s.retention.Run(ctx, RetentionActor, s.Trail, false)
	switch {
	case errors.Is(err, ErrGCBusy):
		s.log.Info("retention: a run is already in progress; skipping this tick")
	case err != nil:
		s.log.Error("retention run failed", "err", err)
	case res != nil:
		s.log.Info("retention run", "checkpoints", plan.Checkpoints, "deleted", len(res.Deleted), "failed", len(res.Failed),
			"pinned", len(plan.Pinned), "deferred", len(plan.Deferred), "unverified", len(plan.Unverified))
	}
}

// Export signs the trail's head and exports sealed segments to the store,
// like a node's, so `audit query --from-store` shows the service's records
// beside the nodes'.
func (s *Server) Export(ctx context.Context) {
	if _, err := s.Trail.SignHead(ctx); err != nil {
		s.log.Warn("signing the audit head failed", "err", err)
	}
	res, err := s.Trail.Export(ctx, s.st, audit.ExportOptions{Retention: retentionFor(s.cfg)})
	if err != nil {
		s.log.Warn("exporting the audit trail to the store failed; will retry", "err", err)
		return
	}
	if len(res.Keys) > 0 {
		s.log.Info("exported audit segments", "count", len(res.Keys), "through", res.Through)
	}
}

func retentionFor(cfg *policy.Config) store.Retention {
	ol := cfg.Store.ObjectLock
	if ol == nil || ol.Mode == "" {
		return store.Retention{}
	}
	return store.Retention{Mode: ol.Mode, Until: time.Now().AddDate(0, 0, ol.Days), LegalHold: ol.LegalHold}
}

// Shutdown stops accepting requests, lets those in flight finish (up to 30
// seconds), exports what the trail holds and closes it and the index.
func (s *Server) Shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.Export(ctx)
	if cerr := s.Trail.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if cerr := s.Index.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// certReloader serves the certificate in certFile/keyFile and reloads it
// when either file changes (checked at most once a second, on handshakes),
// so a renewed certificate is used without a restart. A broken renewal
// keeps the previous certificate and is logged.
type certReloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	cert              *tls.Certificate
	stamp             string
	checked           time.Time
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certReloader) fileStamp() string {
	var st string
	for _, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return ""
		}
		st += fmt.Sprintf("%d/%d;", fi.ModTime().UnixNano(), fi.Size())
	}
	return st
}

func (c *certReloader) load() error {
	stamp := c.fileStamp()
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("serve.tlsCert/tlsKey (%s, %s): %w", c.certFile, c.keyFile, err)
	}
	c.cert, c.stamp = &cert, stamp
	return nil
}

func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.checked) >= time.Second {
		c.checked = now
		if st := c.fileStamp(); st != "" && st != c.stamp {
			if err := c.load(); err != nil {
				slog.Warn("the renewed TLS certificate does not load; serving the previous one", "err", err)
				c.stamp = st // do not retry until the files change again
			} else {
				slog.Info("reloaded the TLS certificate", "file", c.certFile)
			}
		}
	}
	return c.cert, nil
}
