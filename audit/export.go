package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/checkpoint-vault/ckvault/vault/store"
)

// Segments in the store.
//
// A segment seals records First..Last of one node's log: it is the object
//
//	audit/<node>/<First, 20 digits>-<Last, 20 digits>.jsonl
//
// holding one JSON object per line: {"record": R} for each record in seq
// order, then one {"head": H}, the signed head at seq Last. A segment MUST
// verify on its own (hash chain and head signature) and MUST link to the
// node's previous segment (its first record's prev is the previous
// segment's last hash). Segment bytes are a deterministic function of the
// log, so re-exporting yields identical objects.
const SegmentPrefix = "audit/"

// SegmentKey names the segment of node covering first..last.
func SegmentKey(node string, first, last uint64) string {
	return fmt.Sprintf("%s%s/%020d-%020d.jsonl", SegmentPrefix, node, first, last)
}

// IsSegmentKey reports whether key names a segment. Keys under
// SegmentPrefix that do not are not the trail's: a Kubernetes namespace may
// be named "audit", and its checkpoints' keys
// (audit/<pod>/<container>/<object>) start like segments.
func IsSegmentKey(key string) bool {
	_, _, _, ok := parseSegmentKey(key)
	return ok
}

// parseSegmentKey is SegmentKey's inverse.
func parseSegmentKey(key string) (node string, first, last uint64, ok bool) {
	rest, ok := strings.CutPrefix(key, SegmentPrefix)
	if !ok {
		return "", 0, 0, false
	}
	node, name, ok := strings.Cut(rest, "/")
	if !ok || node == "" {
		return "", 0, 0, false
	}
	name, ok = strings.CutSuffix(name, ".jsonl")
	a, b, ok2 := strings.Cut(name, "-")
	if !ok || !ok2 || len(a) != 20 || len(b) != 20 {
		return "", 0, 0, false
	}
	first, err1 := strconv.ParseUint(a, 10, 64)
	last, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil || first == 0 || last < first {
		return "", 0, 0, false
	}
	return node, first, last, true
}

type segmentLine struct {
	Record *Record `json:"record,omitempty"`
	Head   *Head   `json:"head,omitempty"`
}

// ExportOptions tune Export.
type ExportOptions struct {
	// Retention is applied to every segment written (Object Lock); the
	// caller computes Until for this run, e.g. now + the configured days.
	Retention store.Retention
	// MaxRecords bounds a segment (default 10,000). A segment always ends
	// at a signed head, so one may exceed it when heads are sparse.
	MaxRecords int
}

// ExportResult says what one Export run did.
type ExportResult struct {
	// Keys lists the segments written (or found already present).
	Keys []string
	// Through is the last exported seq.
	Through uint64
}

var metaExported = []byte("exported") // 8-byte BE: last exported seq

// Export writes every record covered by a signed head and not yet exported
// to st as sealed segments. It is idempotent and resumable: progress is
// kept in the database after each segment, and a segment already in the
// store (from a run interrupted between Put and the progress update) is
// compared byte for byte instead of rewritten (an Object-Locked object
// cannot be). Records after the last signed head wait for the next head.
func (l *Log) Export(ctx context.Context, st store.Store, opts ExportOptions) (ExportResult, error) {
	var res ExportResult
	if l.readOnly {
		return res, ErrReadOnly
	}
	if opts.MaxRecords <= 0 {
		opts.MaxRecords = 10_000
	}
	for {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		seg, from, to, err := l.nextSegment(opts.MaxRecords)
		if err != nil || seg == nil {
			return res, err
		}
		key := SegmentKey(l.opts.Node, from, to)
		if err := putSegment(ctx, st, key, seg, opts.Retention); err != nil {
			return res, err
		}
		err = l.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(metaExported, seqKey(to))
		})
		if err != nil {
			return res, fmt.Errorf("audit: recording export progress at seq %d: %w", to, err)
		}
		res.Keys = append(res.Keys, key)
		res.Through = to
	}
}

// Exported returns the last exported seq.
func (l *Log) Exported() (uint64, error) {
	var n uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(metaExported); len(v) == 8 {
			n = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return n, err
}

// nextSegment builds the next segment's bytes, or returns nil when nothing
// sealed is left. It re-checks the chain of what it seals: a log that does
// not verify is not spread to the store.
func (l *Log) nextSegment(maxRecords int) (seg []byte, from, to uint64, err error) {
	err = l.db.View(func(tx *bolt.Tx) error {
		var done uint64
		if v := tx.Bucket(bucketMeta).Get(metaExported); len(v) == 8 {
			done = binary.BigEndian.Uint64(v)
		}
		hc := tx.Bucket(bucketHeads).Cursor()
		var head *Head
		for k, v := hc.Seek(seqKey(done + 1)); k != nil; k, v = hc.Next() {
			var h Head
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("signed head %x does not decode: %w", k, err)
			}
			if head != nil && h.Seq-done > uint64(maxRecords) {
				break
			}
			head = &h
		}
		if head == nil {
			return nil
		}
		from, to = done+1, head.Seq
		var prev Digest
		rb := tx.Bucket(bucketRecords)
		if done > 0 {
			r, err := DecodeRecord(rb.Get(seqKey(done)))
			if err != nil {
				return fmt.Errorf("record %d: %w", done, err)
			}
			prev = r.Hash
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		c := rb.Cursor()
		seq := from
		for k, v := c.Seek(seqKey(from)); seq <= to; k, v = c.Next() {
			if k == nil || binary.BigEndian.Uint64(k) != seq {
				return fmt.Errorf("record %d is missing", seq)
			}
			r, err := DecodeRecord(v)
			if err != nil {
				return fmt.Errorf("record %d: %w", seq, err)
			}
			if r.Seq != seq || r.Prev != prev || r.computeHash() != r.Hash {
				return fmt.Errorf("record %d breaks the hash chain", seq)
			}
			if err := enc.Encode(segmentLine{Record: &r}); err != nil {
				return err
			}
			prev = r.Hash
			seq++
		}
		if head.Hash != prev {
			return fmt.Errorf("signed head at seq %d does not match record %d", to, to)
		}
		if err := enc.Encode(segmentLine{Head: head}); err != nil {
			return err
		}
		seg = buf.Bytes()
		return nil
	})
	if err != nil {
		return nil, 0, 0, fmt.Errorf("audit: export refused, the local log does not verify (run `ckvault audit verify`): %w", err)
	}
	return seg, from, to, nil
}

func putSegment(ctx context.Context, st store.Store, key string, seg []byte, ret store.Retention) error {
	if _, err := st.Stat(ctx, key); err == nil {
		// Already there: an earlier run stopped before recording its
		// progress. It must be the same bytes.
		obj, err := st.Open(ctx, key)
		if err != nil {
			return fmt.Errorf("audit: reading existing segment %s in %s: %w", key, st.Describe(), err)
		}
		defer obj.Close()
		got := sha256.New()
		if _, err := io.Copy(got, io.LimitReader(obj, int64(len(seg))+1)); err != nil {
			return fmt.Errorf("audit: reading existing segment %s in %s: %w", key, st.Describe(), err)
		}
		if want := sha256.Sum256(seg); !bytes.Equal(got.Sum(nil), want[:]) {
			return fmt.Errorf("audit: segment %s in %s differs from the local log: the local log was replaced or the store was written by another node with the same name; investigate before exporting", key, st.Describe())
		}
		return nil
	} else if !errors.Is(err, store.ErrNotExist) {
		return fmt.Errorf("audit: checking segment %s in %s: %w", key, st.Describe(), err)
	}
	_, err := st.Put(ctx, key, bytes.NewReader(seg), int64(len(seg)), store.PutOptions{
		ContentType: "application/x-ndjson",
		Retention:   ret,
	})
	if err != nil {
		return fmt.Errorf("audit: exporting segment %s to %s: %w", key, st.Describe(), err)
	}
	return nil
}

// Segment is one parsed segment.
type Segment struct {
	Key     string
	Node    string
	Records []Record
	Head    Head
}

// maxSegmentLine bounds one line of a segment (a record is far smaller).
const maxSegmentLine = 1 << 20

// ParseSegment decodes segment bytes and checks them on their own: every
// record's hash, the chain inside the segment, the seqs First..Last the key
// names and a head for Last. It does not check the head signature or the
// link to the previous segment (ReadStore does).
func ParseSegment(key string, r io.Reader) (*Segment, error) {
	node, first, last, ok := parseSegmentKey(key)
	if !ok {
		return nil, fmt.Errorf("%s is not a segment key (audit/<node>/<first>-<last>.jsonl)", key)
	}
	seg := &Segment{Key: key, Node: node}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxSegmentLine)
	seq := first
	var prev Digest
	haveHead := false
	for sc.Scan() {
		if haveHead {
			return nil, fmt.Errorf("segment %s: data after the head", key)
		}
		var line segmentLine
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&line); err != nil {
			return nil, fmt.Errorf("segment %s: line for seq %d: %w", key, seq, err)
		}
		switch {
		case line.Record != nil && line.Head == nil:
			rec := *line.Record
			if err := rec.validate(); err != nil {
				return nil, fmt.Errorf("segment %s: record %d: %w", key, seq, err)
			}
			if rec.Seq != seq || rec.Node != node {
				return nil, fmt.Errorf("segment %s: expected record %d of node %s, found record %d of node %q", key, seq, node, rec.Seq, rec.Node)
			}
			rec.Time = rec.Time.UTC()
			if rec.computeHash() != rec.Hash {
				return nil, fmt.Errorf("segment %s: record %d: hash does not match its content (modified)", key, seq)
			}
			if seq > first && rec.Prev != prev {
				return nil, fmt.Errorf("segment %s: record %d does not link to record %d", key, seq, seq-1)
			}
			prev = rec.Hash
			seg.Records = append(seg.Records, rec)
			seq++
		case line.Head != nil && line.Record == nil:
			seg.Head = *line.Head
			seg.Head.Time = seg.Head.Time.UTC()
			haveHead = true
		default:
			return nil, fmt.Errorf("segment %s: a line must hold exactly one of record or head", key)
		}
		if seq > last+1 {
			return nil, fmt.Errorf("segment %s: more records than its name says", key)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("segment %s: %w", key, err)
	}
	switch {
	case seq != last+1:
		return nil, fmt.Errorf("segment %s: ends at record %d, its name says %d (truncated)", key, seq-1, last)
	case !haveHead:
		return nil, fmt.Errorf("segment %s: no signed head", key)
	case seg.Head.Node != node || seg.Head.Seq != last || seg.Head.Hash != prev:
		return nil, fmt.Errorf("segment %s: its head does not cover its last record", key)
	}
	return seg, nil
}

// StoreTrail is the audit trail of every node as exported to a store.
type StoreTrail struct {
	// Nodes lists, per node, its records in seq order.
	Nodes map[string][]Record
	// Report holds the findings (Finding.Node set); counts are totals.
	Report *Report
}

// SegmentLister lists the exported segments of a store whose List does not
// return them: the vault service's client (vault/remote), whose List lists
// checkpoints from the service's index. The segments' prefix cannot say
// which is meant, since a Kubernetes namespace may be named "audit".
// ReadStore uses ListSegments when st has it.
type SegmentLister interface {
	ListSegments(ctx context.Context, startAfter string, limit int) ([]store.ObjectInfo, string, error)
}

// ReadStore loads and verifies every node's segments from st: each segment
// on its own, its head signature (against v), and the chain across a node's
// segments from seq 1 without gaps or overlaps. Problems are findings in
// the report, not errors; an error means the store could not be read. The
// trail holds only records under a head signed by a trusted key: a segment
// that does not verify contributes a finding, never a record.
//
// It holds the whole trail in memory.
func ReadStore(ctx context.Context, st store.Reader, v HeadVerifier) (*StoreTrail, error) {
	if v == nil {
		return nil, ErrNoVerifier
	}
	t := &StoreTrail{Nodes: map[string][]Record{}, Report: &Report{Findings: []Finding{}}}
	type ref struct {
		key         string
		first, last uint64
	}
	byNode := map[string][]ref{}
	after := ""
	for {
		var objs []store.ObjectInfo
		var next string
		var err error
		if sl, ok := st.(SegmentLister); ok {
			objs, next, err = sl.ListSegments(ctx, after, 1000)
		} else {
			objs, next, err = st.List(ctx, SegmentPrefix, after, 1000)
		}
		if err != nil {
			return nil, fmt.Errorf("audit: listing %s in %s: %w", SegmentPrefix, st.Describe(), err)
		}
		for _, o := range objs {
			node, first, last, ok := parseSegmentKey(o.Key)
			if !ok && strings.Count(o.Key, "/") >= 3 {
				// namespace/pod/container/object: a checkpoint of a
				// Kubernetes namespace named "audit", not the trail's.
				continue
			}
			if !ok {
				t.Report.Findings = append(t.Report.Findings, Finding{Problem: fmt.Sprintf("object %s is not a segment", o.Key)})
				continue
			}
			byNode[node] = append(byNode[node], ref{o.Key, first, last})
		}
		if next == "" {
			break
		}
		after = next
	}
	nodes := make([]string, 0, len(byNode))
	for n := range byNode {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	hints := map[string]bool{}
	for _, node := range nodes {
		refs := byNode[node]
		sort.Slice(refs, func(i, j int) bool { return refs[i].first < refs[j].first })
		finding := func(seq uint64, format string, args ...any) {
			t.Report.Findings = append(t.Report.Findings, Finding{Node: node, Seq: seq, Problem: fmt.Sprintf(format, args...)})
		}
		var recs []Record
		var prev Digest
		linked := true // prev is known: the chain from seq 1 is unbroken
		next := uint64(1)
		for _, r := range refs {
			if r.first != next {
				if r.first > next {
					finding(next, "segments for records %d to %d are missing", next, r.first-1)
				} else {
					finding(r.first, "segment %s overlaps the previous one", r.key)
				}
				// Continue from this segment so later ones are still read,
				// but the chain across the gap is unproven.
				linked = false
			}
			seg, err := readSegment(ctx, st, r.key)
			if err != nil {
				finding(r.first, "%v", err)
				next, linked = r.last+1, false
				continue
			}
			if linked && seg.Records[0].Prev != prev {
				finding(r.first, "segment %s does not link to the previous segment (a segment was replaced)", r.key)
			}
			hint, err := v.VerifyDigest(seg.Head.Digest(), seg.Head.Sig)
			if err != nil {
				// Its records are left out of the trail: anyone who can
				// write to the store could have written them.
				finding(r.last, "segment %s: head signature does not verify with any trusted key (forged or signed by another key): %v; its records %d to %d are not shown", r.key, err, r.first, r.last)
				next, linked = r.last+1, false
				continue
			}
			t.Report.Heads++
			if !hints[hint] {
				hints[hint] = true
				t.Report.Signers = append(t.Report.Signers, hint)
			}
			recs = append(recs, seg.Records...)
			prev, linked = seg.Head.Hash, true
			next = r.last + 1
		}
		t.Nodes[node] = recs
		t.Report.Records += uint64(len(recs))
		t.Report.Last = max(t.Report.Last, next-1)
	}
	sort.Strings(t.Report.Signers)
	return t, nil
}

func readSegment(ctx context.Context, st store.Reader, key string) (*Segment, error) {
	obj, err := st.Open(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("opening segment %s in %s: %w", key, st.Describe(), err)
	}
	defer obj.Close()
	return ParseSegment(key, obj)
}

// Query filters the trail of every node, ordered by time, then node, then
// seq. The cursor is a position in that order.
func (t *StoreTrail) Query(f Filter) (Page, error) {
	var all []Record
	for _, recs := range t.Nodes {
		for i := range recs {
			if f.Match(&recs[i]) {
				all = append(all, recs[i])
			}
		}
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := &all[i], &all[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Seq < b.Seq
	})
	if f.Newest {
		for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
			all[i], all[j] = all[j], all[i]
		}
	}
	off := 0
	if f.Cursor != "" {
		n, err := strconv.Atoi(f.Cursor)
		if err != nil || n < 0 || n > len(all) {
			return Page{}, fmt.Errorf("audit: query cursor %q is not one this trail returned", f.Cursor)
		}
		off = n
	}
	end := min(off+f.limit(), len(all))
	p := Page{Records: append([]Record{}, all[off:end]...)}
	if end < len(all) {
		p.Next = strconv.Itoa(end)
	}
	return p, nil
}
