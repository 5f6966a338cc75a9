// Package daemon is the node daemon's pipeline: it watches the checkpoints
// directory, admits finished archives, reads each exactly once to seal
// (SHA-256, age, SHA-256) and upload it, signs and uploads its manifest,
// proves the remote copy, records every step in the audit log and only then
// destroys the local copy.
//
// # Invariant
//
// The local archive is never destroyed before the remote copy is proven
// complete and the audit record of that proof is durable. Progress is a
// state machine in bbolt (see Stage), written before each step that depends
// on it, so a crash at any instant resumes: a half-uploaded archive is
// uploaded again under the same object key (the key derives from stable
// inputs: node, container id, file name, size, checkpoint time), an uploaded
// one is re-proven with Stat, a proven one is re-checked and shredded.
//
// # Recipients before the first byte
//
// Recipients depend on the namespace, which only spec.dump states, and
// spec.dump normally follows the CRIU images in the tar. The daemon therefore
// pre-scans the tar headers under the admission lease (seeking over member
// contents, reading only config.dump and spec.dump) before the one pass; see
// prescan.go for why this keeps the one-pass property and what happens when
// the stream disagrees.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/audit/auditsock"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
	"github.com/checkpoint-vault/ckvault/vault/watch"
)

// DefaultMemoryLimit is the Go soft memory limit `ckvault daemon` sets
// unless GOMEMLIMIT is given. The pipeline's live memory is bounded and
// independent of archive size (sealing buffers, one upload part); without a
// limit the garbage collector lets the heap grow to twice that before
// collecting, which shows as resident memory on the node.
const DefaultMemoryLimit = 40 << 20

// Options tune a Daemon beyond its configuration file. The zero value is
// what `ckvault daemon` uses.
type Options struct {
	Logger *slog.Logger
	// ConfigPath is recorded in the config-loaded audit record.
	ConfigPath string
	// Version is written into manifests as the tool version.
	Version string
	// Store replaces the configured store (tests, embedding).
	Store store.Store
	// PollInterval is how often a file still held open for writing is
	// looked at again (default 100ms): it bounds close-to-admission latency.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failure
	// (defaults 1s and 1m).
	MinBackoff, MaxBackoff time.Duration
	// DrainTimeout bounds how long a stop waits for archives in flight
	// (default 2m); after it they are abandoned mid-way, which is safe.
	DrainTimeout time.Duration
	// Debounce is the watcher's quiet time before an event (default 50ms).
	Debounce time.Duration
	// HealthInterval is how often the store's health is checked (default
	// 15s) and HealthTimeout bounds each check (default 10s). The check
	// runs off the scheduler's loop; /readyz reports its last answer.
	HealthInterval, HealthTimeout time.Duration
}

// Daemon is one node daemon. Create it with New and run it with Run once.
type Daemon struct {
	cfg    *policy.Config
	opts   Options
	log    *slog.Logger
	node   string
	owner  admit.OwnerRule
	store  store.Store
	audit  *audit.Log
	state  *stateDB
	signer *signing.Signer
	dir    *admit.Dir
	m      *metrics

	recipients map[string]*envelope.RecipientSet // "" is the global set
	skip       map[string]bool

	// health and exports run the store health check and the audit
	// export off the loop, one at a time; close waits for the export.
	health, exports flight
	exportCtx       context.Context
	stopExport      context.CancelFunc
	stopBy          time.Time // the drain deadline, once stopping (loop, then close)

	mu          sync.Mutex
	queue       *queue // the backlog
	waiters     []chan struct{}
	storeErr    error
	dirGen      uint64 // generation of the checkpoints directory last seen usable
	dirErr      string // why it was refused, while it is
	metricsAddr string
	ready       chan struct{}
}

// item is one name in the backlog.
type item struct {
	name       string
	first      time.Time // when it entered the backlog
	due        time.Time
	attempts   int
	running    bool
	again      bool // an event arrived while running
	detected   bool
	lastReason string
	// dir is the checkpoints directory, verified for this attempt; set
	// by the worker around process.
	dir *admit.DirRef
	// hidx and in place the item in one of the queue's heaps (-1, nil
	// while running).
	hidx int
	in   *itemHeap
}

// New opens everything the daemon needs and fails, naming what and how to
// fix it, on any misconfiguration: recipients, signing key, state and audit
// databases, the checkpoints directory and the store.
func New(ctx context.Context, cfg *policy.Config, opts Options) (d *Daemon, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Minute
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 2 * time.Minute
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 50 * time.Millisecond
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = 15 * time.Second
	}
	if opts.HealthTimeout <= 0 {
		opts.HealthTimeout = 10 * time.Second
	}
	d = &Daemon{cfg: cfg, opts: opts, log: opts.Logger, node: cfg.Node, m: newMetrics(),
		queue: newQueue(), ready: make(chan struct{}), skip: map[string]bool{},
		recipients: map[string]*envelope.RecipientSet{}}
	uid, anyOwner := cfg.Daemon.OwnerRule()
	d.owner = admit.OwnerRule{Any: anyOwner, UID: uid}
	var closers []func() error
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()

	if err := d.loadRecipients(); err != nil {
		return nil, err
	}
	pw := signing.PasswordFromEnv()
	if cfg.Signing.PasswordFile != "" {
		pw = signing.PasswordFromFile(cfg.Signing.PasswordFile)
	}
	d.signer, err = signing.LoadSigner(ctx, cfg.Signing.Key, pw)
	if err != nil {
		return nil, fmt.Errorf("loading signing key %s: %w", cfg.Signing.Key, err)
	}
	trusted, err := trustedKeys(cfg, d.signer)
	if err != nil {
		return nil, err
	}
	if opts.Store != nil {
		d.store = opts.Store
	} else {
		st, err := storeconfig.OpenTuned(cfg.Store, d.log, UploadTuning)
		if err != nil {
			return nil, fmt.Errorf("opening store %s: %w", cfg.Store.URL, err)
		}
		d.store = st
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory %s: %w", cfg.StateDir, err)
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("restricting state directory %s to 0700: %w", cfg.StateDir, err)
	}
	d.state, err = openState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	closers = append(closers, d.state.Close)
	d.audit, err = audit.Open(audit.Path(cfg.StateDir), audit.Options{
		Node: cfg.Node, Signer: d.signer, Verifier: trusted,
		SignEvery: cfg.Audit.SignEvery, SignInterval: cfg.Audit.SignEveryInterval(), Logger: d.log,
	})
	if err != nil {
		return nil, fmt.Errorf("opening audit log in %s: %w", cfg.StateDir, err)
	}
	closers = append(closers, d.audit.Close)
	return d, nil
}

// loadRecipients parses the global and per-namespace recipient sets once, so
// a bad recipient fails the start rather than an archive.
func (d *Daemon) loadRecipients() error {
	eo := envelope.Options{PluginDir: d.cfg.PluginDir}
	load := func(what string, list []string, file string) (*envelope.RecipientSet, error) {
		var rs []envelope.Recipient
		for i, s := range list {
			r, err := eo.ParseRecipient(s)
			if err != nil {
				return nil, fmt.Errorf("%s: recipient %d: %w", what, i+1, err)
			}
			rs = append(rs, r)
		}
		if file != "" {
			more, err := eo.LoadRecipientsFile(file)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			rs = append(rs, more...)
		}
		set, err := envelope.NewRecipientSet(rs...)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return set, nil
	}
	global, err := load("recipients", d.cfg.Recipients, d.cfg.RecipientsFile)
	if err != nil {
		return err
	}
	d.recipients[""] = global
	for ns := range d.cfg.Namespaces {
		list, file, skip := d.cfg.NamespacePolicy(ns)
		if skip {
			d.skip[ns] = true
			continue
		}
		set, err := load("namespaces."+ns+".recipients", list, file)
		if err != nil {
			return err
		}
		d.recipients[ns] = set
	}
	return nil
}

// recipientsFor returns who may read namespace ns's archives, or skip.
func (d *Daemon) recipientsFor(ns string) (*envelope.RecipientSet, bool, error) {
	if d.skip[ns] {
		return nil, true, nil
	}
	if rs, ok := d.recipients[ns]; ok {
		return rs, false, nil
	}
	return d.recipients[""], false, nil
}

func trustedKeys(cfg *policy.Config, s *signing.Signer) (audit.HeadVerifier, error) {
	var paths []string
	if cfg.Signing.PublicKey != "" {
		paths = append(paths, cfg.Signing.PublicKey)
	}
	paths = append(paths, cfg.Signing.PublicKeys...)
	var t *signing.TrustedKeys
	var err error
	if len(paths) > 0 {
		t, err = signing.LoadTrustedKeys(paths...)
	} else {
		t, err = signing.ParseTrustedKeys(s.PublicKeyPEM())
	}
	if err != nil {
		return nil, fmt.Errorf("loading trusted signing keys: %w", err)
	}
	// Heads carry the raw DER signatures d.signer makes.
	return t.DER(), nil
}

// record appends an audit record as the daemon and waits until it is
// durable.
func (d *Daemon) record(ctx context.Context, r audit.Record) error {
	if r.Actor == "" {
		r.Actor = "daemon"
	}
	err := testFaultRecord(r)
	if err == nil {
		_, err = d.audit.Append(ctx, r)
	}
	if err != nil {
		d.log.Error("audit record not durable", "action", r.Action, "subject", r.Subject, "err", err)
	}
	return err
}

// Run runs the daemon until ctx is cancelled (SIGTERM), then drains the
// archives in flight and stops. It closes the daemon's databases on return.
func (d *Daemon) Run(ctx context.Context) (err error) {
	defer d.close(&err)
	if err := d.record(ctx, audit.Record{Action: "started", Subject: d.node, Outcome: audit.OK,
		Detail: map[string]string{"version": d.opts.Version}}); err != nil {
		return fmt.Errorf("audit log refuses records, not starting: %w", err)
	}
	fps := d.recipients[""].Fingerprints()
	if err := d.record(ctx, audit.Record{Action: "config-loaded", Subject: d.opts.ConfigPath, Outcome: audit.OK,
		Detail: map[string]string{"store": d.store.Describe(), "checkpointsDir": d.cfg.CheckpointsDir,
			"recipients": fmt.Sprint(fps), "namespacePolicies": strconv.Itoa(len(d.cfg.Namespaces)),
			"signingKey": d.signer.KeyHint(), "workers": strconv.Itoa(d.cfg.Daemon.Workers)}}); err != nil {
		return err
	}
	if d.cfg.Store.Insecure {
		d.log.Warn("store.insecure is set: plain HTTP to the store is allowed — development only")
	}
	d.exportCtx, d.stopExport = context.WithCancel(context.WithoutCancel(ctx))
	if err := d.checkStore(ctx); errors.Is(err, store.ErrPermanent) {
		return fmt.Errorf("store %s is misconfigured: %w", d.store.Describe(), err)
	} else if err != nil {
		d.log.Warn("store unreachable at start; archives wait on the node until it answers", "store", d.store.Describe(), "err", err)
	}
	if j, ok := d.store.(store.Janitor); ok && d.storeError() == nil {
		jctx, cancel := context.WithTimeout(ctx, time.Minute)
		if n, err := j.AbortStaleUploads(jctx, 24*time.Hour); err == nil && n > 0 {
			d.log.Info("removed debris of interrupted uploads", "count", n)
		}
		cancel()
	}

	if err := os.MkdirAll(d.cfg.CheckpointsDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		d.log.Warn("checkpoints directory cannot be created; waiting for it", "dir", d.cfg.CheckpointsDir, "err", err)
	}
	// Before the listeners start: their probes use d.dir.
	d.dir, err = admit.OpenDir(d.cfg.CheckpointsDir, d.dirRule())
	if err != nil {
		return fmt.Errorf("opening checkpoints directory: %w", err)
	}
	srvCtx, stopServers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServers()
	if err := d.serve(srvCtx); err != nil {
		return err
	}
	dir, err := d.acquireDir(ctx)
	if err != nil {
		return err
	}
	err = d.settleShreds(ctx, dir)
	dir.Release()
	if err != nil {
		return fmt.Errorf("finishing interrupted shreds: %w", err)
	}
	// Every name with an unfinished version is looked at, whether or not
	// the watcher finds a file there: a version whose file was removed
	// while the daemon was down is finished from its record (settleName).
	if err := d.queueUnfinished(); err != nil {
		return err
	}
	events := make(chan watch.Event, 256)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- watch.Run(watchCtx, watch.Options{Dir: d.cfg.CheckpointsDir, RescanInterval: d.cfg.Daemon.RescanEvery(),
			Debounce: d.opts.Debounce, Logger: d.log}, events)
	}()
	d.log.Info("daemon started", "node", d.node, "checkpointsDir", d.cfg.CheckpointsDir, "store", d.store.Describe(),
		"workers", d.cfg.Daemon.Workers, "listen", d.metricsAddr)
	close(d.ready)
	return d.loop(ctx, events, watchErr)
}

// queueUnfinished queues the name of every version not in a terminal stage.
func (d *Daemon) queueUnfinished() error {
	all, err := d.state.All()
	if err != nil {
		return fmt.Errorf("reading the state database: %w", err)
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range all {
		if !p.Stage.Terminal() {
			d.queue.event(p.Name, now)
		}
	}
	return nil
}

// loop is the scheduler: it owns the backlog and hands due names to a
// bounded pool of workers. It never blocks on anything but its own
// channels: attempts, their audit records, the store health check and the
// audit export all run in other goroutines, and it sleeps on one timer set
// to the earliest due time.
func (d *Daemon) loop(ctx context.Context, events <-chan watch.Event, watchErr <-chan error) error {
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	type done struct {
		it    *item
		res   result
		retry time.Duration
	}
	workers := d.cfg.Daemon.Workers
	// Buffered to the pool's size: neither side ever waits for the other.
	results := make(chan done, workers)
	work := make(chan *item, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range work {
				d.m.inFlight.Inc()
				res, err := d.attempt(workCtx, it)
				d.m.inFlight.Dec()
				results <- done{it, res, d.afterAttempt(workCtx, it, res, err)}
			}
		}()
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	gauges := time.NewTicker(time.Second)
	defer gauges.Stop()
	housekeeping := time.NewTicker(d.opts.HealthInterval)
	defer housekeeping.Stop()
	export := time.NewTicker(d.cfg.Audit.ExportEvery())
	defer export.Stop()
	running, free := 0, workers
	var stopping <-chan time.Time
	var runErr error

	// dispatch hands due items, oldest first, to free workers and sets
	// the timer for the next one to fall due.
	dispatch := func() {
		timer.Stop()
		if stopping != nil {
			return
		}
		now := time.Now()
		d.mu.Lock()
		for free > 0 {
			it := d.queue.next(now)
			if it == nil {
				break
			}
			work <- it // buffered: room for every free worker
			free--
			running++
		}
		wake := d.queue.wake(now)
		d.mu.Unlock()
		if free > 0 && !wake.IsZero() {
			timer.Reset(max(wake.Sub(now), 0))
		}
	}

	dispatch() // names queued before the loop (queueUnfinished)
	for {
		select {
		case ev := <-events:
			if stopping == nil && ev.Kind != watch.Pinned {
				d.mu.Lock()
				d.queue.event(ev.Name, time.Now())
				d.mu.Unlock()
				dispatch()
			}
		case r := <-results:
			running--
			free++
			d.mu.Lock()
			d.queue.finish(r.it, r.res, r.retry, time.Now())
			d.mu.Unlock()
			dispatch()
		case <-timer.C:
			dispatch()
		case err := <-watchErr:
			if err != nil && stopping == nil {
				runErr = fmt.Errorf("watching %s: %w", d.cfg.CheckpointsDir, err)
				stopping = d.drainFrom(time.Now())
			}
			watchErr = nil
		case <-gauges.C:
			d.gauges()
		case <-housekeeping.C:
			d.health.start(func() { d.checkStore(workCtx) })
			d.logBacklog()
		case <-export.C:
			d.exports.start(func() { d.exportAudit(d.exportCtx) })
		case <-ctx.Done():
			if stopping == nil {
				d.log.Info("stopping: draining archives in flight", "inFlight", running)
				stopping = d.drainFrom(time.Now())
				ctx = context.Background() // stop selecting on Done
				timer.Stop()
			}
		case <-stopping:
			d.log.Warn("drain timeout: abandoning archives in flight; they resume at the next start", "inFlight", running)
			cancelWork()
			stopping = make(chan time.Time) // never fires again
		}
		if stopping != nil && running == 0 {
			close(work)
			wg.Wait()
			return runErr
		}
	}
}

// afterAttempt runs in the worker once an attempt ends: it counts and
// audits a failure (once per reason, not on every retry) and returns how
// long the name waits before its next attempt.
func (d *Daemon) afterAttempt(ctx context.Context, it *item, res result, err error) time.Duration {
	switch res {
	case resPoll:
		return d.opts.PollInterval
	case resBackoff:
	default:
		return 0
	}
	d.mu.Lock()
	it.attempts++
	n := it.attempts
	d.mu.Unlock()
	delay := backoff(n, d.opts.MinBackoff, d.opts.MaxBackoff, jitter)
	reason := "error"
	var f *failure
	if errors.As(err, &f) {
		reason = f.reason
	}
	d.m.failures.WithLabelValues(reason).Inc()
	// A refused directory is audited once for all archives (acquireDir),
	// not once per archive.
	if it.lastReason != reason && reason != "checkpoints-dir" {
		it.lastReason = reason
		d.record(ctx, audit.Record{Action: "failed", Subject: it.name, Outcome: audit.Error,
			Detail: map[string]string{"reason": reason, "error": errString(err), "retry": delay.String()}})
	}
	d.log.Warn("vaulting failed; archive stays local, will retry", "file", it.name, "reason", reason,
		"attempt", n, "retryIn", delay, "err", err)
	return delay
}

// attempt runs process with the checkpoints directory held and verified
// for the whole attempt.
func (d *Daemon) attempt(ctx context.Context, it *item) (result, error) {
	dir, err := d.acquireDir(ctx)
	if err != nil {
		return resBackoff, err
	}
	defer dir.Release()
	it.dir = dir
	defer func() { it.dir = nil }()
	return d.process(ctx, it)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (d *Daemon) gauges() {
	d.mu.Lock()
	n, oldest := len(d.queue.items), d.queue.oldest(false)
	d.mu.Unlock()
	d.m.queueDepth.Set(float64(n))
	if oldest.IsZero() {
		d.m.oldestPending.Set(0)
	} else {
		d.m.oldestPending.Set(time.Since(oldest).Seconds())
	}
}

func (d *Daemon) logBacklog() {
	d.mu.Lock()
	n, oldest := len(d.queue.items), d.queue.oldest(true)
	d.mu.Unlock()
	if !oldest.IsZero() {
		d.log.Warn("backlog: archives waiting on the local disk", "count", n, "oldestAge", time.Since(oldest).Round(time.Second).String(),
			"storeErr", errString(d.storeError()))
	}
}

// checkStore asks the store whether it is usable and records the answer
// for /readyz, the status endpoint and the backlog log. It is bounded by
// HealthTimeout on every path: the caller gets an answer in time even from
// a store call that ignored its context (that call is left to finish on
// its own; the scheduler runs one check at a time, so they cannot pile
// up behind a store that answers nothing).
func (d *Daemon) checkStore(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, d.opts.HealthTimeout)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		if c, ok := d.store.(store.Checker); ok {
			res <- c.Check(cctx)
			return
		}
		_, _, err := d.store.List(cctx, "", "", 1)
		res <- err
	}()
	var err error
	select {
	case err = <-res:
	case <-cctx.Done():
		err = fmt.Errorf("store %s did not answer its health check within %s: %w", d.store.Describe(), d.opts.HealthTimeout, cctx.Err())
	}
	d.mu.Lock()
	d.storeErr = err
	d.mu.Unlock()
	return err
}

// dirRule is who may own the checkpoints directory: root, the daemon's
// user and the archives' required owner.
func (d *Daemon) dirRule() admit.DirRule {
	owners := []uint32{0, uint32(os.Geteuid())}
	if !d.owner.Any {
		owners = append(owners, d.owner.UID)
	}
	return admit.DirRule{Owners: owners}
}

// acquireDir takes the checkpoints directory for one use (see admit.Dir:
// verified against its path, reopened if it was replaced, refused while it
// is missing or unsafe). The first refusal and every reopening are audited.
func (d *Daemon) acquireDir(ctx context.Context) (*admit.DirRef, error) {
	ref, err := d.dir.Acquire()
	var rec *audit.Record
	d.mu.Lock()
	switch {
	case err != nil && d.dirErr != err.Error():
		d.dirErr = err.Error()
		rec = &audit.Record{Action: "checkpoints-dir", Subject: d.cfg.CheckpointsDir, Outcome: audit.Error,
			Detail: map[string]string{"event": "refused", "error": err.Error()}}
	case err == nil && (ref.Generation() != d.dirGen || d.dirErr != ""):
		dev, ino := ref.Identity()
		event := "usable again"
		if ref.Generation() != d.dirGen && d.dirGen != 0 {
			event = "replaced: reopened"
		}
		if d.dirGen == 0 {
			event = "opened"
		}
		d.dirGen, d.dirErr = ref.Generation(), ""
		rec = &audit.Record{Action: "checkpoints-dir", Subject: d.cfg.CheckpointsDir, Outcome: audit.OK,
			Detail: map[string]string{"event": event, "dev": strconv.FormatUint(dev, 10), "inode": strconv.FormatUint(ino, 10)}}
	}
	d.mu.Unlock()
	if rec != nil {
		if rec.Outcome == audit.OK {
			d.log.Info("checkpoints directory "+rec.Detail["event"], "dir", d.cfg.CheckpointsDir, "inode", rec.Detail["inode"])
		} else {
			d.log.Error("checkpoints directory unusable; archives wait until it is fixed", "err", err)
		}
		d.record(ctx, *rec)
	}
	if err != nil {
		return nil, &failure{"checkpoints-dir", err}
	}
	return ref, nil
}

func (d *Daemon) storeError() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.storeErr
}

func (d *Daemon) exportAudit(ctx context.Context) {
	if _, err := d.audit.SignHead(ctx); err != nil {
		d.log.Warn("signing the audit head failed", "err", err)
	}
	res, err := d.audit.Export(ctx, d.store, audit.ExportOptions{})
	if err != nil {
		d.log.Warn("exporting the audit trail to the store failed; will retry", "err", err)
		return
	}
	if len(res.Keys) > 0 {
		d.log.Info("exported audit segments", "count", len(res.Keys), "through", res.Through)
	}
}

// serve starts the metrics/health listener and the local unix socket.
func (d *Daemon) serve(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Only what a restart cures fails liveness: a checkpoints
		// directory removed behind its bind mount is never seen again
		// from inside this process (see admit.ErrDirRemoved).
		if err := d.dir.Check(); errors.Is(err, admit.ErrDirRemoved) {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := d.storeError(); err != nil {
			http.Error(w, "store unreachable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := d.state.Writable(); err != nil {
			http.Error(w, "state database not writable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		dir, err := d.acquireDir(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		dir.Release()
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", d.cfg.Daemon.Listen)
	if err != nil {
		return fmt.Errorf("listening on daemon.listen %s: %w (choose a free port)", d.cfg.Daemon.Listen, err)
	}
	d.metricsAddr = ln.Addr().String()
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)

	sockPath := filepath.Join(d.cfg.StateDir, auditsock.SocketName)
	sl, err := auditsock.Listen(sockPath)
	if err != nil {
		hs.Close()
		return fmt.Errorf("local socket %s: %w", sockPath, err)
	}
	smux := http.NewServeMux()
	smux.Handle("/v1/audit/", auditsock.Handler(d.audit))
	smux.HandleFunc("/v1/status", d.serveStatus)
	ss := auditsock.NewServer(smux)
	go ss.Serve(sl)
	go func() {
		<-ctx.Done()
		hs.Close()
		ss.Close()
	}()
	return nil
}

// Status is what the local socket's /v1/status returns.
type Status struct {
	Node        string     `json:"node"`
	Store       string     `json:"store"`
	StoreError  string     `json:"storeError,omitempty"`
	Pending     int        `json:"pending"`
	OldestAge   string     `json:"oldestPendingAge,omitempty"`
	Archives    []Progress `json:"archives"`
	AuditLast   uint64     `json:"auditLast"`
	AuditSigned uint64     `json:"auditSigned"`
}

func (d *Daemon) serveStatus(w http.ResponseWriter, r *http.Request) {
	peer, ok := auditsock.PeerFrom(r.Context())
	if !ok || (peer.UID != 0 && peer.UID != os.Getuid()) {
		http.Error(w, `{"error":"only root or the daemon's user may ask"}`, http.StatusForbidden)
		return
	}
	st, err := d.Status()
	if err != nil {
		http.Error(w, `{"error":"status unavailable"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(st)
}

// Status reports the backlog and every recorded archive version.
func (d *Daemon) Status() (*Status, error) {
	all, err := d.state.All()
	if err != nil {
		return nil, err
	}
	st := &Status{Node: d.node, Store: d.store.Describe(), Archives: all}
	var oldest time.Time
	st.AuditLast, st.AuditSigned = d.audit.Last()
	if err := d.storeError(); err != nil {
		st.StoreError = err.Error()
	}
	d.mu.Lock()
	st.Pending, oldest = len(d.queue.items), d.queue.oldest(false)
	d.mu.Unlock()
	if !oldest.IsZero() {
		st.OldestAge = time.Since(oldest).Round(time.Millisecond).String()
	}
	return st, nil
}

// Ready is closed once the daemon watches the directory and serves.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// MetricsAddr is the address /metrics listens on (after Ready).
func (d *Daemon) MetricsAddr() string { return d.metricsAddr }

// Audit returns the daemon's audit log (for embedding: the demo prints the
// trail from it). Valid until Run returns.
func (d *Daemon) Audit() *audit.Log { return d.audit }

// notify wakes WaitVaulted callers.
func (d *Daemon) notify() {
	d.mu.Lock()
	ws := d.waiters
	d.waiters = nil
	d.mu.Unlock()
	for _, w := range ws {
		close(w)
	}
}

// ErrRejected is returned by WaitVaulted for an archive the daemon rejected
// or skipped.
var ErrRejected = errors.New("archive was not vaulted")

// WaitVaulted waits until the archive called name (a base name in the
// checkpoints directory) is proven in the store — and, unless pinned,
// shredded — and returns its progress record (Object is the base key).
func (d *Daemon) WaitVaulted(ctx context.Context, name string) (*Progress, error) {
	for {
		d.mu.Lock()
		w := make(chan struct{})
		d.waiters = append(d.waiters, w)
		d.mu.Unlock()
		all, err := d.state.All()
		if err != nil {
			return nil, err
		}
		// The newest record of the name; a shredded one only counts when
		// the name is gone (else it is an older version of the name).
		var last *Progress
		for i := range all {
			if all[i].Name == name && (last == nil || all[i].Updated.After(last.Updated)) {
				last = &all[i]
			}
		}
		if last != nil {
			_, statErr := os.Lstat(filepath.Join(d.cfg.CheckpointsDir, name))
			switch last.Stage {
			case StageShredded:
				if statErr != nil {
					return last, nil
				}
			case StagePinned:
				return last, nil
			case StageRejected, StageSkipped:
				return last, fmt.Errorf("%s: %w (%s: %s)", name, ErrRejected, last.Stage, last.Reason)
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w:
		case <-time.After(time.Second):
		}
	}
}

// drainFrom starts the drain: archives in flight (and an audit export)
// get until DrainTimeout after now.
func (d *Daemon) drainFrom(now time.Time) <-chan time.Time {
	d.stopBy = now.Add(d.opts.DrainTimeout)
	return time.After(d.opts.DrainTimeout)
}

func (d *Daemon) close(errp *error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// An export in flight uses the audit log: wait for it (cancelling it
	// at the drain deadline, so that a stop takes no longer than the drain
	// timeout) before the last export and before the log is closed.
	if d.stopExport != nil {
		by := d.stopBy
		if by.IsZero() {
			by = time.Now().Add(d.opts.DrainTimeout)
		}
		wctx, wcancel := context.WithDeadline(ctx, by)
		finished := d.exports.wait(wctx)
		wcancel()
		if !finished {
			d.log.Warn("audit export still running at stop; cancelling it")
			d.stopExport()
			d.exports.wait(context.Background())
		}
		defer d.stopExport()
	}
	d.record(ctx, audit.Record{Action: "stopped", Subject: d.node, Outcome: audit.OK,
		Detail: map[string]string{"error": errString(*errp)}})
	if d.storeError() == nil {
		d.exportAudit(ctx)
	}
	err := errors.Join(d.audit.Close(), d.state.Close())
	if d.dir != nil {
		d.dir.Close()
	}
	if *errp == nil {
		*errp = err
	}
}
