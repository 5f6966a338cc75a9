package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Index is the service's index of vaulted checkpoints, in bbolt: one entry
// per base key, holding the objects present under it and the manifest and
// signature bytes, verified once when the entry appears or changes. A
// listing reads the index only (a namespace is a key-prefix seek), never
// the store.
//
// Refresh lists the store's keys and reads and verifies only the entries
// that are new or whose objects changed; entries whose objects are gone
// (removed by retention) are dropped. Rebuild empties the index and
// refreshes from scratch.
type Index struct {
	db      *bolt.DB
	st      store.Reader
	trusted *signing.TrustedKeys
	log     *slog.Logger

	refreshMu sync.Mutex // one refresh at a time

	// next is the refresh that starts once the running one ends, shared
	// by every RefreshShared caller that arrives meanwhile.
	nextMu sync.Mutex
	next   *refreshCall
}

type refreshCall struct {
	done chan struct{}
	res  RefreshResult
	err  error
}

var bucketEntries = []byte("checkpoints")

// OpenIndex opens (creating) the index database at path.
func OpenIndex(path string, st store.Reader, trusted *signing.TrustedKeys, log *slog.Logger) (*Index, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening the index %s: %w (is another ckvault serve using this stateDir?)", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketEntries)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialising the index %s: %w", path, err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Index{db: db, st: st, trusted: trusted, log: log}, nil
}

// Close closes the database.
func (x *Index) Close() error { return x.db.Close() }

// Len returns the number of entries.
func (x *Index) Len() int {
	n := 0
	x.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketEntries).Stats().KeyN
		return nil
	})
	return n
}

// RefreshResult says what one refresh did.
type RefreshResult struct {
	Added, Updated, Removed, Unverified int
	Duration                            time.Duration
}

// Refresh brings the index up to date with the store.
func (x *Index) Refresh(ctx context.Context) (RefreshResult, error) {
	x.refreshMu.Lock()
	defer x.refreshMu.Unlock()
	return x.refresh(ctx)
}

// RefreshShared is Refresh for requests (POST /v1/index/refresh): every
// caller that arrives while a refresh runs shares the one that starts when
// it ends — which lists the store after they asked, so it sees what they
// want seen. A burst of requests then costs at most two listings of the
// whole store instead of one each, queued behind the lock. The shared
// refresh runs to its end even if the caller that started it goes away.
func (x *Index) RefreshShared(ctx context.Context) (RefreshResult, error) {
	x.nextMu.Lock()
	c := x.next
	if c == nil {
		c = &refreshCall{done: make(chan struct{})}
		x.next = c
		go func() {
			x.refreshMu.Lock()
			defer x.refreshMu.Unlock()
			x.nextMu.Lock()
			x.next = nil // later callers wait for the refresh after this one
			x.nextMu.Unlock()
			c.res, c.err = x.refresh(context.WithoutCancel(ctx))
			close(c.done)
		}()
	}
	x.nextMu.Unlock()
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return RefreshResult{}, ctx.Err()
	}
}

// refresh is Refresh with refreshMu held.
func (x *Index) refresh(ctx context.Context) (RefreshResult, error) {
	start := time.Now()
	var res RefreshResult
	current := map[string]map[string]store.ObjectInfo{} // base -> suffix -> info
	after := ""
	for {
		objs, next, err := x.st.List(ctx, "", after, 1000)
		if err != nil {
			return res, fmt.Errorf("index: listing %s: %w", x.st.Describe(), err)
		}
		for _, o := range objs {
			// Audit segments (.jsonl) are not checkpoint objects; the
			// checkpoints of a namespace named "audit" share their
			// prefix and are indexed like any other.
			base, ok := manifest.BaseKeyOf(o.Key)
			if !ok {
				continue
			}
			if current[base] == nil {
				current[base] = map[string]store.ObjectInfo{}
			}
			current[base][o.Key[len(base):]] = o
		}
		if next == "" || len(objs) == 0 {
			break
		}
		after = next
	}

	// Which entries changed?
	var changed []string
	var removed [][]byte
	err := x.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for base, objs := range current {
			v := b.Get([]byte(base))
			if v == nil {
				changed = append(changed, base)
				continue
			}
			var e remote.Checkpoint
			if json.Unmarshal(v, &e) != nil || !sameObjects(e.Objects, objs) {
				changed = append(changed, base)
			}
		}
		return b.ForEach(func(k, _ []byte) error {
			if _, ok := current[string(k)]; !ok {
				removed = append(removed, bytes.Clone(k))
			}
			return nil
		})
	})
	if err != nil {
		return res, err
	}
	slices.Sort(changed)

	// Load the changed entries a few at a time, write them in batches.
	const batch = 200
	for i := 0; i < len(changed); i += batch {
		part := changed[i:min(i+batch, len(changed))]
		entries := make([]remote.Checkpoint, len(part))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for j, base := range part {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				entries[j] = x.load(ctx, base, current[base])
			}()
		}
		wg.Wait()
		if err := ctx.Err(); err != nil {
			return res, err
		}
		err := x.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEntries)
			for _, e := range entries {
				if b.Get([]byte(e.Base)) == nil {
					res.Added++
				} else {
					res.Updated++
				}
				if !e.Verified {
					res.Unverified++
				}
				v, err := json.Marshal(&e)
				if err != nil {
					return err
				}
				if err := b.Put([]byte(e.Base), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("index: writing: %w", err)
		}
	}
	if len(removed) > 0 {
		err := x.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEntries)
			for _, k := range removed {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("index: removing entries: %w", err)
		}
		res.Removed = len(removed)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// Rebuild empties the index and refreshes it from scratch.
func (x *Index) Rebuild(ctx context.Context) (RefreshResult, error) {
	x.refreshMu.Lock()
	err := x.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketEntries); err != nil {
			return err
		}
		_, err := tx.CreateBucket(bucketEntries)
		return err
	})
	x.refreshMu.Unlock()
	if err != nil {
		return RefreshResult{}, fmt.Errorf("index: emptying: %w", err)
	}
	return x.Refresh(ctx)
}

func sameObjects(have []remote.Object, now map[string]store.ObjectInfo) bool {
	if len(have) != len(now) {
		return false
	}
	for _, o := range have {
		base, _ := manifest.BaseKeyOf(o.Key)
		n, ok := now[o.Key[len(base):]]
		if !ok || n.Size != o.Size || !n.LastModified.Equal(o.LastModified) {
			return false
		}
	}
	return true
}

// inlineSuffixes are the small objects whose bytes an entry carries.
var inlineSuffixes = []string{manifest.SuffixManifest, manifest.SuffixManifestSig, manifest.SuffixManifestBundle,
	manifest.SuffixCiphertextSig, manifest.SuffixCiphertextBundle}

// load reads base's small objects and verifies its manifest. Failures are
// recorded in the entry (Problem), never dropped: a responder must see a
// tampered or incomplete checkpoint in a listing.
func (x *Index) load(ctx context.Context, base string, objs map[string]store.ObjectInfo) remote.Checkpoint {
	e := remote.Checkpoint{Base: base, Signatures: map[string][]byte{}}
	for _, sfx := range slices.Sorted(maps.Keys(objs)) {
		o := objs[sfx]
		e.Objects = append(e.Objects, remote.Object{Key: o.Key, Size: o.Size, LastModified: o.LastModified})
	}
	if kp, ok := responder.ParseBaseKey(base); ok {
		e.ID, e.Namespace, e.Pod, e.Container, e.Node, e.Checkpointed = kp.ShortID, kp.Namespace, kp.Pod, kp.Container, kp.Node, kp.Checkpointed
	} else {
		e.ID = base
		e.Namespace, _, _ = strings.Cut(base, "/")
	}
	for _, sfx := range inlineSuffixes {
		o, ok := objs[sfx]
		if !ok {
			continue
		}
		limit := int64(manifest.MaxSignatureSize)
		if sfx == manifest.SuffixManifest {
			limit = manifest.MaxSize
		}
		if o.Size > limit {
			e.Problem = fmt.Sprintf("%s is %d bytes, more than a real one can be", o.Key, o.Size)
			continue
		}
		b, err := store.ReadSmall(ctx, x.st, o.Key, limit)
		if err != nil {
			e.Problem = fmt.Sprintf("reading %s: %v", o.Key, err)
			continue
		}
		if sfx == manifest.SuffixManifest {
			e.Manifest = b
		} else {
			e.Signatures[sfx] = b
		}
	}
	if e.Problem != "" {
		return e
	}
	if e.Manifest == nil {
		e.Problem = "incomplete: no manifest (an upload in progress or interrupted)"
		return e
	}
	var sigs [][]byte
	for _, sfx := range []string{manifest.SuffixManifestSig, manifest.SuffixManifestBundle} {
		if s, ok := e.Signatures[sfx]; ok {
			sigs = append(sigs, s)
		}
	}
	m, err := responder.VerifyManifest(x.trusted, base, e.Manifest, sigs)
	if err != nil {
		e.Problem = err.Error()
		x.log.Warn("index: a checkpoint did not verify; listed with its problem", "object", base, "err", err)
		return e
	}
	e.Verified = true
	e.Namespace, e.Pod, e.Container, e.Node = m.Namespace, m.Pod, m.Container, m.Node
	e.Checkpointed = m.CheckpointedAt.Time
	e.Size, e.SHA256 = m.Ciphertext.Size, m.Ciphertext.SHA256
	return e
}

// Query selects index entries. Empty fields match everything.
type Query struct {
	Namespace, Pod, Container, Node string
	// Prefix restricts base keys to those starting with it.
	Prefix string
	// Since is inclusive, Until exclusive (checkpoint time).
	Since, Until time.Time
	// After continues a listing: only base keys sorting after it.
	After string
	Limit int
}

func (q *Query) keyPrefix() string {
	p := q.Prefix
	if q.Namespace != "" {
		np := q.Namespace + "/"
		if q.Pod != "" {
			np += q.Pod + "/"
			if q.Container != "" {
				np += q.Container + "/"
			}
		}
		// The narrower of the two, when they agree; a contradiction
		// selects nothing (an impossible prefix).
		switch {
		case strings.HasPrefix(np, p):
			p = np
		case !strings.HasPrefix(p, np):
			p = "\x00"
		}
	}
	return p
}

func (q *Query) match(e *remote.Checkpoint) bool {
	t := e.Checkpointed
	return (q.Namespace == "" || e.Namespace == q.Namespace) &&
		(q.Pod == "" || e.Pod == q.Pod) &&
		(q.Container == "" || e.Container == q.Container) &&
		(q.Node == "" || e.Node == q.Node) &&
		(q.Since.IsZero() || !t.Before(q.Since)) &&
		(q.Until.IsZero() || t.Before(q.Until))
}

// entryMeta is the part of an entry the filters read.
type entryMeta struct {
	Namespace    string    `json:"namespace"`
	Pod          string    `json:"pod"`
	Container    string    `json:"container"`
	Node         string    `json:"node"`
	Checkpointed time.Time `json:"checkpointed"`
}

// errStop ends a bbolt iteration early.
var errStop = errors.New("stop")

// List returns up to q.Limit entries matching q for which visible (the
// caller's authorisation, by namespace) is true, in base-key order, and the
// cursor of the next page ("" when there are no more). It reads the index
// only.
//
// visible may take seconds (a SubjectAccessReview), so it is never called
// inside a transaction: a read transaction held that long would stall the
// refresh's writes whenever the database grows (bbolt remaps only once
// every reader is done), and every request queued behind them. Meeting a
// namespace not yet decided, the scan ends its transaction, asks, and
// resumes at that key in a new one.
func (x *Index) List(q Query, visible func(namespace string) (bool, error)) ([]json.RawMessage, string, error) {
	var out []json.RawMessage
	next, last, size := "", "", 0
	prefix := []byte(q.keyPrefix())
	decided := map[string]bool{}
	resume := "" // the key to go on from, once a namespace is decided
	for {
		undecided := ""
		err := x.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketEntries).Cursor()
			var k, v []byte
			switch {
			case resume != "":
				k, v = c.Seek([]byte(resume))
			default:
				k, v = c.Seek(prefix)
				if q.After != "" && q.After >= string(prefix) {
					k, v = c.Seek([]byte(q.After))
					if k != nil && string(k) == q.After {
						k, v = c.Next()
					}
				}
			}
			for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				ns, _, inNS := strings.Cut(string(k), "/")
				ok, known := decided[ns]
				if !known {
					undecided, resume = ns, string(k)
					return errStop
				}
				if !ok && !inNS {
					// A key with no namespace directory (debris at the
					// store's root): skip it alone. Seeking past ns+"0"
					// would also skip "ns-x/..." and "ns.x/...", other
					// namespaces, which sort between the two.
					continue
				}
				if !ok {
					// Skip the whole namespace at once: every key between
					// "ns/" and "ns0" starts with "ns/".
					k, v = c.Seek([]byte(ns + "0")) // '0' sorts right after '/'
					if k == nil {
						break
					}
					k, v = c.Prev()
					continue
				}
				// Decode only what the filters need; the entry goes out as
				// stored (its manifest and signatures are most of its bytes).
				var e entryMeta
				if err := json.Unmarshal(v, &e); err != nil {
					return fmt.Errorf("index entry %s is corrupt (%v); rebuild the index (ckvault serve --rebuild-index, or delete %s)", k, err, x.db.Path())
				}
				if !q.match(&remote.Checkpoint{Namespace: e.Namespace, Pod: e.Pod, Container: e.Container, Node: e.Node, Checkpointed: e.Checkpointed}) {
					continue
				}
				// A page ends at q.Limit entries, or before the entry that
				// would take it past MaxPageBytes: the page is held in
				// memory here and read whole by the client, and whoever
				// writes to the store can make entries large.
				if len(out) == q.Limit || len(out) > 0 && size+len(v) > MaxPageBytes {
					next = last
					return errStop
				}
				out = append(out, bytes.Clone(v))
				size += len(v)
				last = string(k)
			}
			return nil
		})
		if err != nil && !errors.Is(err, errStop) {
			return nil, "", err
		}
		if undecided == "" {
			return out, next, nil
		}
		ok, err := visible(undecided)
		if err != nil {
			return nil, "", err
		}
		decided[undecided] = ok
	}
}

// Get returns the entry of base.
func (x *Index) Get(base string) (remote.Checkpoint, bool, error) {
	var e remote.Checkpoint
	found := false
	err := x.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketEntries).Get([]byte(base))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &e)
	})
	return e, found, err
}

// Put stores e as is (for tests and benchmarks that fill the index without
// a store of that size).
func (x *Index) Put(entries ...remote.Checkpoint) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for i := range entries {
			v, err := json.Marshal(&entries[i])
			if err != nil {
				return err
			}
			if err := b.Put([]byte(entries[i].Base), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Path is the database file.
func (x *Index) Path() string { return x.db.Path() }

// ScanKeys calls fn with every base key in order until it returns false.
// It decodes nothing.
func (x *Index) ScanKeys(fn func(base string) bool) error {
	return x.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEntries).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if !fn(string(k)) {
				return nil
			}
		}
		return nil
	})
}
