package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Filter selects records. Empty fields match everything; set fields must
// all match (AND).
type Filter struct {
	// Since is inclusive, Until exclusive; zero means unbounded.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`

	Action    string  `json:"action,omitempty"`
	Namespace string  `json:"namespace,omitempty"`
	Pod       string  `json:"pod,omitempty"`
	Actor     string  `json:"actor,omitempty"`
	Subject   string  `json:"subject,omitempty"`
	Outcome   Outcome `json:"outcome,omitempty"`

	// Limit is the page size: default DefaultLimit, at most MaxLimit.
	Limit int `json:"limit,omitempty"`
	// Cursor continues a previous query: pass Page.Next.
	Cursor string `json:"cursor,omitempty"`
	// Newest returns the newest records first.
	Newest bool `json:"newest,omitempty"`
}

// Page sizes.
const (
	DefaultLimit = 100
	MaxLimit     = 100_000
)

// Page is one page of query results.
type Page struct {
	Records []Record `json:"records"`
	// Next is the cursor for the following page; empty on the last page.
	Next string `json:"next,omitempty"`
}

func (f *Filter) limit() int {
	switch {
	case f.Limit <= 0:
		return DefaultLimit
	case f.Limit > MaxLimit:
		return MaxLimit
	}
	return f.Limit
}

// Match reports whether r passes the filter's field and time conditions
// (not the cursor or limit).
func (f *Filter) Match(r *Record) bool {
	return (f.Since.IsZero() || !r.Time.Before(f.Since)) &&
		(f.Until.IsZero() || r.Time.Before(f.Until)) &&
		(f.Action == "" || f.Action == r.Action) &&
		(f.Namespace == "" || f.Namespace == r.Namespace) &&
		(f.Pod == "" || f.Pod == r.Pod) &&
		(f.Actor == "" || f.Actor == r.Actor) &&
		(f.Subject == "" || f.Subject == r.Subject) &&
		(f.Outcome == "" || f.Outcome == r.Outcome)
}

func (f *Filter) equalities() map[string]string {
	m := map[string]string{}
	for name, v := range map[string]string{
		idxAction: f.Action, idxNamespace: f.Namespace, idxPod: f.Pod,
		idxActor: f.Actor, idxSubject: f.Subject, idxOutcome: string(f.Outcome),
	} {
		if v != "" {
			m[name] = v
		}
	}
	return m
}

// Query returns one page of matching records in seq order (oldest first
// unless f.Newest). It never scans the log: the time bounds become a seq
// range through the time index (record times never decrease), and the
// other conditions are intersected through their indexes, seeking from one
// candidate seq to the next.
func (l *Log) Query(ctx context.Context, f Filter) (Page, error) {
	page := Page{Records: []Record{}}
	var cursor uint64
	if f.Cursor != "" {
		c, err := strconv.ParseUint(f.Cursor, 10, 64)
		if err != nil {
			return page, fmt.Errorf("audit: query cursor %q is not one this log returned", f.Cursor)
		}
		cursor = c
	}
	limit := f.limit()
	err := l.db.View(func(tx *bolt.Tx) error {
		rb, ib := tx.Bucket(bucketRecords), tx.Bucket(bucketIndex)
		lo, hi := seqRange(tx, &f)
		if cursor != 0 {
			if f.Newest {
				hi = min(hi, cursor-1)
			} else {
				lo = max(lo, cursor+1)
			}
		}
		var iters []*seqIter
		for name, v := range f.equalities() {
			iters = append(iters, &seqIter{c: ib.Cursor(), prefix: valuePrefix(name, v)})
		}
		if len(iters) == 0 {
			iters = append(iters, &seqIter{c: rb.Cursor()})
		}
		var last uint64
		n := 0
		for seq := range intersect(iters, lo, hi, f.Newest) {
			if n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if len(page.Records) == limit {
				page.Next = strconv.FormatUint(last, 10)
				break
			}
			n++
			v := rb.Get(seqKey(seq))
			if v == nil {
				return fmt.Errorf("index names record %d, which is missing; run `ckvault audit verify`", seq)
			}
			r, err := DecodeRecord(v)
			if err != nil {
				return fmt.Errorf("record %d: %w; run `ckvault audit verify`", seq, err)
			}
			// An index entry is a hint, the record is the truth: a
			// planted index entry must not put a record under a filter it
			// does not match.
			if !f.Match(&r) {
				continue
			}
			page.Records = append(page.Records, r)
			last = seq
		}
		return nil
	})
	if err != nil {
		return Page{}, fmt.Errorf("audit: query: %w", err)
	}
	return page, nil
}

// seqRange turns f's time bounds into the inclusive seq range [lo, hi].
func seqRange(tx *bolt.Tx, f *Filter) (lo, hi uint64) {
	lo = 1
	if k, _ := tx.Bucket(bucketRecords).Cursor().Last(); len(k) == 8 {
		hi = binary.BigEndian.Uint64(k)
	}
	tc := tx.Bucket(bucketIndex).Cursor()
	isTime := func(k []byte) bool { return len(k) == 17 && k[0] == indexTag[idxTime] }
	if !f.Since.IsZero() {
		k, _ := tc.Seek(timeKey(f.Since, 0))
		if !isTime(k) {
			return 1, 0 // everything is older
		}
		lo = binary.BigEndian.Uint64(k[9:])
	}
	if !f.Until.IsZero() {
		k, _ := tc.Seek(timeKey(f.Until, 0))
		if isTime(k) {
			s := binary.BigEndian.Uint64(k[9:])
			if s == 0 {
				return 1, 0
			}
			hi = min(hi, s-1)
		}
	}
	return lo, hi
}

// seqIter walks the seqs stored under prefix in a bucket whose keys are
// prefix + 8-byte BE seq (an index), or plain seqs (the records bucket).
type seqIter struct {
	c      *bolt.Cursor
	prefix []byte
}

func (it *seqIter) key(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, len(it.prefix)+8), it.prefix...), seq)
}

func (it *seqIter) seq(k []byte) (uint64, bool) {
	if len(k) != len(it.prefix)+8 || !bytes.HasPrefix(k, it.prefix) {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[len(it.prefix):]), true
}

// ge returns the smallest seq >= t.
func (it *seqIter) ge(t uint64) (uint64, bool) {
	k, _ := it.c.Seek(it.key(t))
	return it.seq(k)
}

// le returns the largest seq <= t.
func (it *seqIter) le(t uint64) (uint64, bool) {
	want := it.key(t)
	k, _ := it.c.Seek(want)
	switch {
	case k == nil:
		k, _ = it.c.Last()
	case !bytes.Equal(k, want):
		k, _ = it.c.Prev()
	}
	return it.seq(k)
}

// intersect yields the seqs in [lo, hi] present in every iterator, in
// ascending (or, with desc, descending) order: each iterator in turn seeks
// to the current candidate, and any that lands past it moves the candidate.
func intersect(iters []*seqIter, lo, hi uint64, desc bool) func(func(uint64) bool) {
	return func(yield func(uint64) bool) {
		if lo > hi || hi == 0 {
			return
		}
		target := lo
		if desc {
			target = hi
		}
		for {
			agreed := true
			for _, it := range iters {
				var s uint64
				var ok bool
				if desc {
					s, ok = it.le(target)
				} else {
					s, ok = it.ge(target)
				}
				if !ok || s < lo || s > hi {
					return
				}
				if s != target {
					target, agreed = s, false
					break
				}
			}
			if !agreed {
				continue
			}
			if !yield(target) {
				return
			}
			if desc {
				if target == lo {
					return
				}
				target--
			} else {
				if target == hi {
					return
				}
				target++
			}
		}
	}
}
