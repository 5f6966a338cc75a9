package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Finding is one problem Verify found.
type Finding struct {
	// Node is the log's node (set for store segments).
	Node string `json:"node,omitempty"`
	// Seq is the first sequence number the problem affects.
	Seq uint64 `json:"seq"`
	// Problem says what is wrong, in words an auditor can act on.
	Problem string `json:"problem"`
}

func (f Finding) String() string {
	if f.Node != "" {
		return fmt.Sprintf("node %s seq %d: %s", f.Node, f.Seq, f.Problem)
	}
	return fmt.Sprintf("seq %d: %s", f.Seq, f.Problem)
}

// Report is the result of a verification. The log is proven unaltered, up
// to the limits in the package documentation, when Findings is empty.
type Report struct {
	Records uint64 `json:"records"`
	// Last is the newest record's seq.
	Last uint64 `json:"last"`
	// Heads counts the signed heads checked; LastSigned is the seq the
	// newest valid one covers.
	Heads      int    `json:"heads"`
	LastSigned uint64 `json:"lastSigned"`
	// Unsigned counts records after the last signed head: they are chained
	// but not yet covered by a signature (see the package documentation).
	Unsigned uint64 `json:"unsigned"`
	// Signers lists the key hints of the keys that signed the heads.
	Signers  []string  `json:"signers,omitempty"`
	Findings []Finding `json:"findings"`
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return len(r.Findings) == 0 }

// FirstBad returns the finding with the lowest seq.
func (r *Report) FirstBad() (Finding, bool) {
	if len(r.Findings) == 0 {
		return Finding{}, false
	}
	f := r.Findings[0]
	for _, g := range r.Findings[1:] {
		if g.Seq < f.Seq {
			f = g
		}
	}
	return f, true
}

func (r *Report) add(seq uint64, format string, args ...any) {
	// Bound the report: a rewritten log would otherwise list every record.
	if len(r.Findings) < 100 {
		r.Findings = append(r.Findings, Finding{Seq: seq, Problem: fmt.Sprintf(format, args...)})
	}
}

// ErrNoVerifier: Verify needs the keys the auditor trusts.
var ErrNoVerifier = errors.New("audit: no trusted head key to verify against (set signing.publicKey in the config)")

// Verify recomputes the hash chain over every record, checks every signed
// head against v (nil means Options.Verifier) and checks that the query
// indexes match the records. It reads one consistent snapshot and may run
// while the log is being appended to. An error means the check could not
// run; problems found are in the Report.
func (l *Log) Verify(ctx context.Context, v HeadVerifier) (*Report, error) {
	if v == nil {
		v = l.opts.Verifier
	}
	if v == nil {
		return nil, ErrNoVerifier
	}
	rep := &Report{Findings: []Finding{}}
	var heads []Head
	err := l.db.View(func(tx *bolt.Tx) error {
		rb, hb, ib := tx.Bucket(bucketRecords), tx.Bucket(bucketHeads), tx.Bucket(bucketIndex)
		if rb == nil || hb == nil || ib == nil {
			rep.add(1, "database lacks the records, heads or index bucket")
			return nil
		}
		heads = loadHeads(hb, rep)
		headAt := map[uint64]*Head{}
		for i := range heads {
			headAt[heads[i].Seq] = &heads[i]
		}
		indexCount := map[string]int{}
		var prev Record
		expect := uint64(1)
		c := rb.Cursor()
		for k, val := c.First(); k != nil; k, val = c.Next() {
			if rep.Records%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			rep.Records++
			if len(k) != 8 {
				rep.add(expect, "record key %x is not an 8-byte sequence number (inserted record)", k)
				continue
			}
			seq := binary.BigEndian.Uint64(k)
			if seq != expect {
				if seq > expect {
					rep.add(expect, "records %d to %d are missing (deleted)", expect, seq-1)
				} else {
					rep.add(seq, "record key %d out of order", seq)
				}
			}
			expect = seq + 1
			r, err := DecodeRecord(val)
			if err != nil {
				rep.add(seq, "record does not decode (modified): %v", err)
				prev = Record{Seq: seq}
				continue
			}
			switch {
			case r.Seq != seq:
				rep.add(seq, "record stored under seq %d says it is seq %d (moved or reordered)", seq, r.Seq)
			case r.computeHash() != r.Hash:
				rep.add(seq, "record hash does not match its content (modified)")
			case seq == 1 && r.Prev != (Digest{}):
				rep.add(seq, "first record links to a predecessor (records before it were deleted)")
			case seq > 1 && (prev.Seq != seq-1 || r.Prev != prev.Hash):
				rep.add(seq, "record does not link to record %d (a record before it was modified, deleted, inserted or reordered)", seq-1)
			case r.Time.Before(prev.Time):
				rep.add(seq, "record time %s is before its predecessor's %s", r.Time, prev.Time)
			}
			if h := headAt[seq]; h != nil && h.Hash != r.Hash {
				rep.add(seq, "record does not match the signed head at seq %d (modified or replaced)", seq)
			}
			checkIndexes(ib, &r, indexCount, rep)
			prev = r
			rep.Last = seq
		}
		for _, h := range heads {
			if h.Seq > rep.Last {
				rep.add(rep.Last+1, "signed head covers seq %d but the log ends at %d: records %d to %d were dropped", h.Seq, rep.Last, rep.Last+1, h.Seq)
			}
		}
		got := map[byte]int{}
		ic := ib.Cursor()
		for k, _ := ic.First(); k != nil; k, _ = ic.Next() {
			got[k[0]]++
		}
		for _, name := range append([]string{idxTime}, stringIndexes...) {
			if got[indexTag[name]] != indexCount[name] {
				findExtraIndexEntry(rb, ib, name, rep)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: verifying %s: %w", l.db.Path(), err)
	}
	verifyHeadSigs(rep, heads, v)
	if err := l.checkCadence(rep); err != nil {
		return nil, err
	}
	return rep, nil
}

// checkCadence holds the records after the last signed head to the signing
// cadence. A writer signs the head every SignEvery records and every
// SignInterval, and at open what a crash left unsigned, so a longer
// unsigned tail — in records, or in the time its records span — means
// heads are missing: removed, as someone rewriting the records (who cannot
// sign) must remove every head from the first record they change; or never
// made, because signing failed for that long (the writer's log says so).
// Twice the cadence leaves room for a group commit or a signature in
// flight; shorter rewrites are the exposure window the package
// documentation describes.
func (l *Log) checkCadence(rep *Report) error {
	if rep.Unsigned == 0 {
		return nil
	}
	first := rep.LastSigned + 1
	if rep.Unsigned > 2*uint64(l.opts.SignEvery) {
		rep.add(first, "records %d to %d (%d) are not covered by a signed head: more than twice the signing cadence (every %d records) allows; signed heads were removed (the records may have been rewritten) or signing failed for that long",
			first, rep.Last, rep.Unsigned, l.opts.SignEvery)
		return nil
	}
	var from, to Record
	err := l.db.View(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRecords)
		a, b := rb.Get(seqKey(first)), rb.Get(seqKey(rep.Last))
		if a == nil || b == nil {
			return nil // reported as missing records already
		}
		var err error
		if from, err = DecodeRecord(a); err != nil {
			return nil // reported as not decoding already
		}
		to, _ = DecodeRecord(b)
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit: verifying %s: %w", l.db.Path(), err)
	}
	if span := to.Time.Sub(from.Time); span > 2*l.opts.SignInterval {
		rep.add(first, "records %d to %d span %s without a signed head: more than twice the signing cadence (every %s) allows; signed heads were removed (the records may have been rewritten) or signing failed for that long",
			first, rep.Last, span.Round(time.Millisecond), l.opts.SignInterval)
	}
	return nil
}

// verifyHeadSigs checks every head signature; it runs outside the
// database transaction because a verifier may be slow.
func verifyHeadSigs(rep *Report, heads []Head, v HeadVerifier) {
	hints := map[string]bool{}
	for _, h := range heads {
		hint, err := v.VerifyDigest(h.Digest(), h.Sig)
		if err != nil {
			rep.add(h.Seq, "signed head at seq %d does not verify with any trusted key (forged or signed by another key): %v", h.Seq, err)
			continue
		}
		rep.Heads++
		if h.Seq > rep.LastSigned && h.Seq <= rep.Last {
			rep.LastSigned = h.Seq
		}
		if !hints[hint] {
			hints[hint] = true
			rep.Signers = append(rep.Signers, hint)
		}
	}
	sort.Strings(rep.Signers)
	if rep.Last > rep.LastSigned {
		rep.Unsigned = rep.Last - rep.LastSigned
	}
}

// loadHeads decodes the heads bucket in seq order, reporting bad entries.
func loadHeads(hb *bolt.Bucket, rep *Report) []Head {
	var heads []Head
	var last Head
	_ = hb.ForEach(func(k, v []byte) error {
		var h Head
		if err := json.Unmarshal(v, &h); err != nil || len(k) != 8 || binary.BigEndian.Uint64(k) != h.Seq {
			seq := uint64(0)
			if len(k) == 8 {
				seq = binary.BigEndian.Uint64(k)
			}
			rep.add(seq, "signed head stored under seq %d is malformed or misfiled", seq)
			return nil
		}
		if h.Time.Before(last.Time) {
			rep.add(h.Seq, "signed head at seq %d is older than the head before it", h.Seq)
		}
		last = h
		heads = append(heads, h)
		return nil
	})
	return heads
}

// checkIndexes confirms r's index entries exist and counts them.
func checkIndexes(ib *bolt.Bucket, r *Record, count map[string]int, rep *Report) {
	key := seqKey(r.Seq)
	if !hasKey(ib, timeKey(r.Time, r.Seq)) {
		rep.add(r.Seq, "index time lacks the record (queries would hide it)")
	}
	count[idxTime]++
	for _, name := range stringIndexes {
		v := indexValue(r, name)
		if v == "" {
			continue
		}
		count[name]++
		if !hasKey(ib, append(valuePrefix(name, v), key...)) {
			rep.add(r.Seq, "index %s lacks the record (queries would hide it)", name)
		}
	}
}

// hasKey distinguishes a present key with an empty value from a missing one
// (Get returns nil for both).
func hasKey(b *bolt.Bucket, k []byte) bool {
	got, _ := b.Cursor().Seek(k)
	return bytes.Equal(got, k)
}

// findExtraIndexEntry reports the first entry of index name that names no
// record, or a record without that value. It runs only when the entry
// count shows there is one, so a healthy log pays nothing for it.
func findExtraIndexEntry(rb, b *bolt.Bucket, name string, rep *Report) {
	c := b.Cursor()
	tag := []byte{indexTag[name]}
	for k, _ := c.Seek(tag); k != nil && k[0] == tag[0]; k, _ = c.Next() {
		if len(k) < 9 {
			rep.add(0, "index %s holds a malformed entry %x", name, k)
			return
		}
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		r, err := DecodeRecord(rb.Get(seqKey(seq)))
		if err != nil {
			rep.add(seq, "index %s names record %d, which is missing or unreadable (records dropped, or an index entry planted)", name, seq)
			return
		}
		want := timeKey(r.Time, seq)
		if name != idxTime {
			want = append(valuePrefix(name, indexValue(&r, name)), seqKey(seq)...)
		}
		if !bytes.Equal(k, want) {
			rep.add(seq, "index %s holds an entry for record %d that the record does not match (planted: queries would show it under the wrong value)", name, seq)
			return
		}
	}
}
