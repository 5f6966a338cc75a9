package audit

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// HeadSigner signs the digest of a log head. The node's signing key (a
// sigstore signer: a PEM key or a KMS) is adapted to it by the daemon.
type HeadSigner interface {
	// SignDigest signs a precomputed SHA-256 digest.
	SignDigest(ctx context.Context, digest [32]byte) ([]byte, error)
	// KeyHint names the key (e.g. its public key's fingerprint) so a
	// verifier with several trusted keys can say which one signed.
	KeyHint() string
}

// HeadVerifier checks a head signature against the keys the auditor trusts.
type HeadVerifier interface {
	// VerifyDigest returns the hint of the trusted key that made sig over
	// digest, or an error when no trusted key did.
	VerifyDigest(digest [32]byte, sig []byte) (hint string, err error)
}

// Sentinel errors.
var (
	// ErrNotRecorded: the record could not be made durable. The action it
	// describes MUST NOT happen (audit fails closed).
	ErrNotRecorded = errors.New("audit record not durable")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("audit log is closed")
	// ErrLocked: another process (normally the daemon) holds the database.
	ErrLocked = errors.New("audit database is locked by another process")
	// ErrReadOnly: a write on a log opened with OpenReadOnly.
	ErrReadOnly = errors.New("audit log is open read-only")
)

// FileName is the database's name inside the state directory.
const FileName = "audit.db"

// Path returns the audit database path inside stateDir.
func Path(stateDir string) string { return filepath.Join(stateDir, FileName) }

// Options configure a writable Log.
type Options struct {
	// Node names this node in every record and head. Required.
	Node string
	// Signer signs the head every SignEvery records or SignInterval,
	// whichever comes first, and at Close. Nil disables signed heads: the
	// chain then proves only internal consistency, and anybody who can
	// write the file can rewrite it undetected (development only).
	Signer HeadSigner
	// Verifier is what Verify uses when called without one (the local
	// socket's verify endpoint).
	Verifier HeadVerifier
	// SignEvery defaults to 1000 records; SignInterval to one minute.
	SignEvery    int
	SignInterval time.Duration
	// AppendTimeout bounds one Append, detached from the caller's
	// context; default 10s.
	AppendTimeout time.Duration
	// Logger receives head-signing failures; default slog.Default().
	Logger *slog.Logger
}

// Bucket names. The layout is part of the on-disk format.
var (
	bucketRecords = []byte("records") // seq (8-byte BE) -> canonical record
	bucketHeads   = []byte("heads")   // seq (8-byte BE) -> Head JSON
	bucketIndex   = []byte("index")   // index entries, see indexTag
	bucketMeta    = []byte("meta")    // export progress and format version
)

// Indexed fields. All entries live in one flat bucket (one B-tree: fewer
// pages to write per commit than a bucket per field), keyed
//
//	time:   't' + 8-byte BE Unix nanoseconds + 8-byte BE seq
//	others: tag + uvarint length + value + 8-byte BE seq
//
// so a prefix names exactly one value and its entries are in seq order.
const (
	idxTime      = "time"
	idxAction    = "action"
	idxNamespace = "namespace"
	idxPod       = "pod"
	idxActor     = "actor"
	idxSubject   = "subject"
	idxOutcome   = "outcome"
)

var stringIndexes = []string{idxAction, idxNamespace, idxPod, idxActor, idxSubject, idxOutcome}

func indexValue(r *Record, name string) string {
	switch name {
	case idxAction:
		return r.Action
	case idxNamespace:
		return r.Namespace
	case idxPod:
		return r.Pod
	case idxActor:
		return r.Actor
	case idxSubject:
		return r.Subject
	case idxOutcome:
		return string(r.Outcome)
	}
	panic("unknown index " + name)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

var indexTag = map[string]byte{
	idxTime: 't', idxAction: 'a', idxNamespace: 'n', idxPod: 'p',
	idxActor: 'u', idxSubject: 's', idxOutcome: 'o',
}

func valuePrefix(name, v string) []byte {
	b := append(make([]byte, 0, len(v)+19), indexTag[name])
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func timeKey(t time.Time, seq uint64) []byte {
	b := binary.BigEndian.AppendUint64(append(make([]byte, 0, 17), 't'), uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint64(b, seq)
}

// tip is the newest record.
type tip struct {
	seq  uint64
	hash Digest
	time time.Time
}

// Log is the node's audit trail. A writable Log (Open) has one writer
// goroutine that commits pending appends together (group commit) and a
// signer goroutine that signs heads. All methods are safe for concurrent use.
type Log struct {
	db       *bolt.DB
	opts     Options
	readOnly bool

	reqs     chan *pending
	signKick chan struct{}
	stop     chan struct{} // closed by Close
	wg       sync.WaitGroup
	closeMu  sync.Mutex
	closed   bool
	closeErr error
	// sendMu orders Append's enqueue before Close's stop: Close takes it
	// exclusively, so no request is queued after the writer's final drain.
	sendMu   sync.RWMutex
	stopping bool

	mu      sync.Mutex // guards tip and headSeq
	tip     tip
	headSeq uint64     // seq of the newest signed head
	signMu  sync.Mutex // one head signature at a time
}

type pending struct {
	rec  Record
	done chan error
}

func (o *Options) defaultCadence() {
	if o.SignEvery <= 0 {
		o.SignEvery = 1000
	}
	if o.SignInterval <= 0 {
		o.SignInterval = time.Minute
	}
}

// Open opens (creating if needed) the audit database at path for writing,
// with the directory 0700 and the file 0600. Only one process can hold it;
// a second Open waits up to 1s and then fails with ErrLocked.
func Open(path string, opts Options) (*Log, error) {
	if opts.Node == "" {
		return nil, errors.New("audit: Options.Node is required (the node name recorded in every entry)")
	}
	if err := k8sname.Node.Check(opts.Node); err != nil {
		return nil, fmt.Errorf("audit: %w (the node name is part of every record and of the export's object keys)", err)
	}
	opts.defaultCadence()
	if opts.AppendTimeout <= 0 {
		opts.AppendTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: creating state directory %s: %w", dir, err)
	}
	if err := checkPerm(dir, 0o700); err != nil {
		return nil, err
	}
	// NoFreelistSync: the free list is rebuilt at open instead of being
	// written by every commit, which saves pages (and fsync time) per
	// group commit; crash safety is unchanged.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, openError(path, err)
	}
	// bolt.Open keeps the mode of an existing file: insist on 0600.
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("audit: restricting %s to 0600: %w", path, err)
	}
	l := &Log{
		db:       db,
		opts:     opts,
		reqs:     make(chan *pending, 1024),
		signKick: make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRecords, bucketHeads, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucketIfNotExists(bucketIndex); err != nil {
			return err
		}
		return l.loadTip(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("audit: initialising %s: %w", path, err)
	}
	if l.tip.seq > l.headSeq {
		// Records a crash left unsigned are signed now, not at the first
		// tick: Verify holds an unsigned tail to the signing cadence.
		l.signKick <- struct{}{}
	}
	l.wg.Add(2)
	go l.writer()
	go l.signer()
	return l, nil
}

// OpenReadOnly opens the database for queries and verification while no
// daemon holds it. If one does, it fails after one second with an error
// wrapping ErrLocked: ask the daemon through its socket instead. Verify
// holds the unsigned tail to the default signing cadence; see
// OpenReadOnlyOptions.
func OpenReadOnly(path string) (*Log, error) { return OpenReadOnlyOptions(path, Options{}) }

// OpenReadOnlyOptions is OpenReadOnly for a log written with opts'
// SignEvery and SignInterval (the node's audit.signEvery and
// audit.signInterval), to which Verify holds its unsigned tail. Other
// options are not used.
func OpenReadOnlyOptions(path string, opts Options) (*Log, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("audit: opening %s: %w (is stateDir right, and has the daemon ever run?)", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, openError(path, err)
	}
	opts.defaultCadence()
	l := &Log{db: db, readOnly: true, closed: true, opts: opts}
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketRecords) == nil {
			return fmt.Errorf("%s is not an audit database (no %q bucket)", path, bucketRecords)
		}
		return l.loadTip(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("audit: %w", err)
	}
	return l, nil
}

func openError(path string, err error) error {
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("audit: %s: %w; while the daemon runs, it answers through its socket", path, ErrLocked)
	}
	return fmt.Errorf("audit: opening %s: %w", path, err)
}

func checkPerm(path string, want fs.FileMode) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if st.Mode().Perm()&^want != 0 {
		return fmt.Errorf("audit: %s has mode %v, want at most %v; fix it with chmod %o %s", path, st.Mode().Perm(), want, want, path)
	}
	return nil
}

// loadTip reads the newest record and head.
func (l *Log) loadTip(tx *bolt.Tx) error {
	l.tip = tip{}
	if k, v := tx.Bucket(bucketRecords).Cursor().Last(); k != nil {
		r, err := DecodeRecord(v)
		if err != nil {
			return fmt.Errorf("newest record (key %x): %w; run `ckvault audit verify`", k, err)
		}
		l.tip = tip{seq: r.Seq, hash: r.Hash, time: r.Time}
	}
	if hb := tx.Bucket(bucketHeads); hb != nil {
		if k, _ := hb.Cursor().Last(); len(k) == 8 {
			l.headSeq = binary.BigEndian.Uint64(k)
		}
	}
	return nil
}

// Append records rec and returns its sequence number once the record is
// durable (committed and fsync'd). It sets Seq, Time, Node, Prev and Hash.
//
// Append runs on a context detached from ctx, bounded by
// Options.AppendTimeout, so that a cancelled request cannot lose its
// record. On error (wrapping ErrNotRecorded) the caller MUST NOT perform the
// action; note that a timed-out Append may still commit later, which is
// harmless: the record then describes an action that did not happen, and
// the trail errs on the side of saying too much.
//
// Records must never carry secrets or checkpoint content (see Record).
func (l *Log) Append(ctx context.Context, rec Record) (uint64, error) {
	if l.readOnly {
		return 0, fmt.Errorf("%w: %w", ErrNotRecorded, ErrReadOnly)
	}
	rec.Node = l.opts.Node
	err := rec.validate()
	if err == nil {
		err = CheckIdentity(rec.Namespace, rec.Pod, rec.Container)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: action %q: %v", ErrNotRecorded, rec.Action, err)
	}
	if len(rec.Detail) > 0 { // the caller keeps its map; we keep a copy
		d := make(map[string]string, len(rec.Detail))
		for k, v := range rec.Detail {
			d[k] = v
		}
		rec.Detail = d
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.AppendTimeout)
	defer cancel()
	p := &pending{rec: rec, done: make(chan error, 1)}
	l.sendMu.RLock()
	if l.stopping {
		l.sendMu.RUnlock()
		return 0, fmt.Errorf("%w: action %q: %w", ErrNotRecorded, rec.Action, ErrClosed)
	}
	select {
	case l.reqs <- p:
		l.sendMu.RUnlock()
	case <-ctx.Done():
		l.sendMu.RUnlock()
		return 0, fmt.Errorf("%w: action %q: queueing: %w", ErrNotRecorded, rec.Action, ctx.Err())
	}
	select {
	case err := <-p.done:
		if err != nil {
			return 0, fmt.Errorf("%w: action %q: %w", ErrNotRecorded, rec.Action, err)
		}
		return p.rec.Seq, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: action %q: waiting for commit: %w", ErrNotRecorded, rec.Action, ctx.Err())
	}
}

// Do is the fail-closed way to perform an audited action:
//
//  1. it appends rec as the intent (Detail "phase" = "intent");
//  2. only if that record is durable, it runs act;
//  3. it appends the result: the same record with "phase" = "done",
//     "intent" = the intent's seq and, if act failed, Outcome Error and
//     "error" = act's error text.
//
// It returns act's error, or an error wrapping ErrNotRecorded when a record
// could not be written (when the intent failed, act did not run). The error
// text of act goes into the trail: it must not contain secrets.
func (l *Log) Do(ctx context.Context, rec Record, act func(ctx context.Context) error) error {
	intent := rec
	intent.Detail = withDetail(rec.Detail, "phase", "intent")
	seq, err := l.Append(ctx, intent)
	if err != nil {
		return err
	}
	actErr := act(ctx)
	done := rec
	done.Detail = withDetail(rec.Detail, "phase", "done")
	done.Detail["intent"] = fmt.Sprint(seq)
	if actErr != nil {
		done.Outcome = Error
		msg := actErr.Error()
		if len(msg) > MaxFieldLen {
			msg = msg[:MaxFieldLen-3] + "..."
		}
		done.Detail["error"] = msg
	}
	if _, err := l.Append(ctx, done); err != nil {
		if actErr != nil {
			return fmt.Errorf("%w (and then %w)", actErr, err)
		}
		return err
	}
	return actErr
}

func withDetail(d map[string]string, k, v string) map[string]string {
	out := make(map[string]string, len(d)+3)
	for dk, dv := range d {
		out[dk] = dv
	}
	out[k] = v
	return out
}

// Group commit bounds.
const (
	maxBatch   = 512
	lingerStep = 200 * time.Microsecond
	lingerMax  = 2 * time.Millisecond
)

// writer commits queued appends, as many per transaction as are waiting.
func (l *Log) writer() {
	defer l.wg.Done()
	batch := make([]*pending, 0, maxBatch)
	for {
		var p *pending
		select {
		case p = <-l.reqs:
		case <-l.stop:
			// Close: commit whatever is still queued, then stop.
			for {
				select {
				case p = <-l.reqs:
					l.commit(append(batch[:0], p))
					continue
				default:
				}
				return
			}
		}
		batch = append(batch[:0], p)
		// Group commit: a commit costs two fsyncs whatever its size, so
		// it pays to linger while requests keep arriving (the callers
		// released by the previous commit are coming back), at most
		// lingerStep between arrivals and lingerMax in all.
		deadline := time.Now().Add(lingerMax)
		linger := time.NewTimer(lingerStep)
	gather:
		for len(batch) < maxBatch {
			select {
			case p = <-l.reqs:
				batch = append(batch, p)
				continue
			default:
			}
			if time.Until(deadline) <= 0 {
				break
			}
			linger.Reset(lingerStep)
			select {
			case p = <-l.reqs:
				batch = append(batch, p)
			case <-linger.C:
				break gather
			}
		}
		linger.Stop()
		l.commit(batch)
	}
}

func (l *Log) commit(batch []*pending) {
	l.mu.Lock()
	t := l.tip
	l.mu.Unlock()
	next := t
	err := l.db.Update(func(tx *bolt.Tx) error {
		next = t
		for _, p := range batch {
			if err := appendTx(tx, &next, &p.rec, time.Now()); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		l.mu.Lock()
		l.tip = next
		due := next.seq-l.headSeq >= uint64(l.opts.SignEvery)
		l.mu.Unlock()
		if due && l.opts.Signer != nil {
			select {
			case l.signKick <- struct{}{}:
			default:
			}
		}
	}
	for _, p := range batch {
		p.done <- err
	}
}

// appendTx writes rec as the record after t, with its indexes, and advances
// t. Times never go backwards: a clock stepped back repeats the newest time,
// so time order and seq order agree (queries rely on it).
func appendTx(tx *bolt.Tx, t *tip, rec *Record, now time.Time) error {
	rec.Seq = t.seq + 1
	rec.Time = now.UTC()
	if rec.Time.Before(t.time) {
		rec.Time = t.time
	}
	rec.Prev = t.hash
	rec.Hash = rec.computeHash()
	enc, _ := rec.MarshalBinary()
	rb := tx.Bucket(bucketRecords)
	rb.FillPercent = 1 // append-only keys: pack pages full
	key := seqKey(rec.Seq)
	if err := rb.Put(key, enc); err != nil {
		return err
	}
	idx := tx.Bucket(bucketIndex)
	if err := idx.Put(timeKey(rec.Time, rec.Seq), nil); err != nil {
		return err
	}
	for _, name := range stringIndexes {
		v := indexValue(rec, name)
		if v == "" {
			continue
		}
		if err := idx.Put(append(valuePrefix(name, v), key...), nil); err != nil {
			return err
		}
	}
	*t = tip{seq: rec.Seq, hash: rec.Hash, time: rec.Time}
	return nil
}

// Head is a signed statement "the log of Node held Seq records, the last
// with hash Hash, at Time".
type Head struct {
	Node    string    `json:"node"`
	Seq     uint64    `json:"seq"`
	Hash    Digest    `json:"hash"`
	Time    time.Time `json:"time"`
	KeyHint string    `json:"keyHint,omitempty"`
	Sig     []byte    `json:"sig"`
}

const headDigestPrefix = "ckvault audit head v1\n"

// Digest is what the signature covers: SHA-256 over the prefix, the node
// (uvarint length + bytes), seq (8-byte BE), hash, and time (8-byte BE Unix
// nanoseconds). KeyHint is informational and not covered.
func (h *Head) Digest() [32]byte {
	b := []byte(headDigestPrefix)
	b = appendString(b, h.Node)
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = append(b, h.Hash[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.Time.UnixNano()))
	return sha256.Sum256(b)
}

func (l *Log) signer() {
	defer l.wg.Done()
	tick := time.NewTicker(l.opts.SignInterval)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.signKick:
		case <-tick.C:
		}
		if l.opts.Signer == nil {
			continue
		}
		if _, err := l.SignHead(context.Background()); err != nil {
			// Records stay durable and chained; only the head is late.
			// The next tick retries.
			l.opts.Logger.Error("audit: signing log head failed; retrying at the next interval", "err", err)
		}
	}
}

// SignHead signs and stores the current head, unless it is already signed,
// and returns the newest head.
func (l *Log) SignHead(ctx context.Context) (Head, error) {
	if l.readOnly {
		return Head{}, ErrReadOnly
	}
	if l.opts.Signer == nil {
		return Head{}, errors.New("audit: no head signer configured")
	}
	l.signMu.Lock()
	defer l.signMu.Unlock()
	l.mu.Lock()
	t, headSeq := l.tip, l.headSeq
	l.mu.Unlock()
	if t.seq == 0 || t.seq == headSeq {
		h, _, err := l.lastHead()
		return h, err
	}
	h := Head{Node: l.opts.Node, Seq: t.seq, Hash: t.hash, Time: time.Now().UTC(), KeyHint: l.opts.Signer.KeyHint()}
	if h.Time.Before(t.time) {
		h.Time = t.time
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	d := h.Digest()
	sig, err := l.opts.Signer.SignDigest(ctx, d)
	if err != nil {
		return Head{}, fmt.Errorf("audit: signing head at seq %d: %w", h.Seq, err)
	}
	h.Sig = sig
	enc, err := json.Marshal(h)
	if err != nil {
		return Head{}, err
	}
	err = l.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHeads).Put(seqKey(h.Seq), enc)
	})
	if err != nil {
		return Head{}, fmt.Errorf("audit: storing signed head at seq %d: %w", h.Seq, err)
	}
	l.mu.Lock()
	l.headSeq = h.Seq
	l.mu.Unlock()
	return h, nil
}

// lastHead returns the newest stored head (ok false when there is none).
func (l *Log) lastHead() (Head, bool, error) {
	var h Head
	var ok bool
	err := l.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketHeads).Cursor().Last()
		if k == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &h)
	})
	return h, ok, err
}

// Close commits every queued append, signs the final head (if a signer is
// configured) and closes the database.
func (l *Log) Close() error {
	l.closeMu.Lock()
	defer l.closeMu.Unlock()
	if l.readOnly {
		if l.db == nil {
			return nil
		}
		err := l.db.Close()
		l.db = nil
		return err
	}
	if l.closed {
		return l.closeErr
	}
	l.closed = true
	l.sendMu.Lock()
	l.stopping = true
	close(l.stop)
	l.sendMu.Unlock()
	l.wg.Wait()
	var errs []error
	if l.opts.Signer != nil {
		if _, err := l.SignHead(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := l.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("audit: closing database: %w", err))
	}
	l.closeErr = errors.Join(errs...)
	return l.closeErr
}

// Node returns the node name of a writable log.
func (l *Log) Node() string { return l.opts.Node }

// Last returns the newest record's seq (0 for an empty log) and the seq
// covered by the newest signed head.
func (l *Log) Last() (seq, signed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tip.seq, l.headSeq
}
