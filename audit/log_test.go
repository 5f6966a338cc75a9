package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestAppendVerifyQuery(t *testing.T) {
	key := newTestKey(t)
	l, path := openTest(t, key, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				ns := "payments"
				if i%5 != 0 {
					ns = "default"
				}
				if _, err := l.Append(ctx, rec("uploaded", ns, fmt.Sprintf("pod-%d", w), OK)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if last, _ := l.Last(); last != 100 {
		t.Fatalf("last seq = %d, want 100", last)
	}
	rep, err := l.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Records != 100 {
		t.Fatalf("verify: %+v", rep)
	}
	// Query: payments in pod-2, paged by 2, both orders.
	for _, newest := range []bool{false, true} {
		var got []uint64
		f := Filter{Namespace: "payments", Pod: "pod-2", Limit: 2, Newest: newest}
		for {
			p, err := l.Query(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range p.Records {
				if r.Namespace != "payments" || r.Pod != "pod-2" {
					t.Fatalf("record %d does not match the filter: %+v", r.Seq, r)
				}
				got = append(got, r.Seq)
			}
			if p.Next == "" {
				break
			}
			f.Cursor = p.Next
		}
		if len(got) != 5 {
			t.Fatalf("newest=%v: got %d records %v, want 5", newest, len(got), got)
		}
		for i := 1; i < len(got); i++ {
			if (got[i] > got[i-1]) == newest {
				t.Fatalf("newest=%v: order wrong: %v", newest, got)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("db mode: %v %v", st.Mode(), err)
	}
	ro, err := OpenReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	rep, err = ro.Verify(ctx, key)
	if err != nil || !rep.OK() || rep.LastSigned != 100 || rep.Unsigned != 0 {
		t.Fatalf("after close: %+v %v", rep, err)
	}
}

func TestQueryTimeRange(t *testing.T) {
	key := newTestKey(t)
	l, _ := openTest(t, key, nil)
	defer l.Close()
	ctx := context.Background()
	var mid time.Time
	for i := 1; i <= 20; i++ {
		if i == 11 {
			time.Sleep(5 * time.Millisecond)
			mid = time.Now()
			time.Sleep(5 * time.Millisecond)
		}
		if _, err := l.Append(ctx, rec("detected", "ns", "p", OK)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		f          Filter
		first, n   uint64
		wantNewest bool
	}{
		{Filter{Since: mid}, 11, 10, false},
		{Filter{Until: mid}, 1, 10, false},
		{Filter{Until: mid, Newest: true}, 10, 10, true},
		{Filter{Since: mid, Action: "detected", Outcome: OK}, 11, 10, false},
		{Filter{Since: mid, Action: "nothing"}, 0, 0, false},
		{Filter{Since: time.Now().Add(time.Hour)}, 0, 0, false},
		{Filter{Until: time.Unix(0, 0)}, 0, 0, false},
	} {
		p, err := l.Query(ctx, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(p.Records)) != tc.n || (tc.n > 0 && p.Records[0].Seq != tc.first) {
			t.Errorf("%+v: got %d records, first %v", tc.f, len(p.Records), p.Records)
		}
	}
}

func TestDoFailsClosed(t *testing.T) {
	key := newTestKey(t)
	l, _ := openTest(t, key, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a cancelled request must still get its records
	ran := false
	err := l.Do(ctx, rec("shredded", "ns", "p", OK), func(context.Context) error { ran = true; return errors.New("disk gone") })
	if !ran || err == nil || err.Error() != "disk gone" {
		t.Fatalf("Do: ran=%v err=%v", ran, err)
	}
	p, _ := l.Query(context.Background(), Filter{})
	if len(p.Records) != 2 || p.Records[0].Detail["phase"] != "intent" || p.Records[1].Outcome != Error ||
		p.Records[1].Detail["error"] != "disk gone" || p.Records[1].Detail["intent"] != "1" {
		t.Fatalf("records: %+v", p.Records)
	}
	l.Close()
	ran = false
	err = l.Do(context.Background(), rec("shredded", "ns", "p", OK), func(context.Context) error { ran = true; return nil })
	if ran || !errors.Is(err, ErrNotRecorded) || !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: ran=%v err=%v", ran, err)
	}
	if _, err := l.Append(context.Background(), Record{Action: "x", Outcome: "maybe"}); !errors.Is(err, ErrNotRecorded) {
		t.Fatalf("bad outcome: %v", err)
	}
}

func TestLockedMessage(t *testing.T) {
	l, path := openTest(t, newTestKey(t), nil)
	defer l.Close()
	// bbolt's flock is per open file description, so a second open in the
	// same process conflicts like a second process would.
	_, err := OpenReadOnly(path)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "socket") {
		t.Fatalf("read-only open of a held db: %v", err)
	}
}

// buildTampered writes 50 records (heads every 10), closes the log and
// hands the raw database to edit.
func buildTampered(t *testing.T, key *testKey, edit func(t *testing.T, tx *bolt.Tx)) *Report {
	t.Helper()
	l, path := openTest(t, key, nil)
	ctx := context.Background()
	for i := 1; i <= 50; i++ {
		if _, err := l.Append(ctx, rec("uploaded", "ns", fmt.Sprintf("pod-%d", i%3), OK)); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			if _, err := l.SignHead(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { edit(t, tx); return nil }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := OpenReadOnlyOptions(path, Options{SignEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	rep, err := ro.Verify(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// rewriteFrom changes record seq's detail and re-chains every record from
// there to the end with their times, as someone without the signing key
// would.
func rewriteFrom(t *testing.T, tx *bolt.Tx, seq uint64) {
	prev := getRec(t, tx, seq-1)
	tp := tip{seq: seq - 1, hash: prev.Hash, time: prev.Time}
	for s := seq; ; s++ {
		v := tx.Bucket(bucketRecords).Get(seqKey(s))
		if v == nil {
			return
		}
		r := getRec(t, tx, s)
		if s == seq {
			r.Detail = map[string]string{"size": "4242"}
		}
		if err := appendTx(tx, &tp, &r, r.Time); err != nil {
			t.Fatal(err)
		}
	}
}

// removeHeadsFrom deletes the signed heads covering seq and later records.
func removeHeadsFrom(t *testing.T, tx *bolt.Tx, seq uint64) {
	c := tx.Bucket(bucketHeads).Cursor()
	for k, _ := c.Seek(seqKey(seq)); k != nil; k, _ = c.Seek(seqKey(seq)) {
		if err := c.Delete(); err != nil {
			t.Fatal(err)
		}
	}
}

func getRec(t *testing.T, tx *bolt.Tx, seq uint64) Record {
	r, err := DecodeRecord(tx.Bucket(bucketRecords).Get(seqKey(seq)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func putRec(t *testing.T, tx *bolt.Tx, seq uint64, r Record) {
	b, _ := r.MarshalBinary()
	if err := tx.Bucket(bucketRecords).Put(seqKey(seq), b); err != nil {
		t.Fatal(err)
	}
}

func TestTamper(t *testing.T) {
	key := newTestKey(t)
	other := newTestKey(t)
	for _, tc := range []struct {
		name    string
		edit    func(t *testing.T, tx *bolt.Tx)
		firstAt uint64
	}{
		{"untouched", func(*testing.T, *bolt.Tx) {}, 0},
		{"change a field", func(t *testing.T, tx *bolt.Tx) {
			r := getRec(t, tx, 23)
			r.Outcome = Denied
			putRec(t, tx, 23, r)
		}, 23},
		{"change a field and rehash", func(t *testing.T, tx *bolt.Tx) {
			r := getRec(t, tx, 23)
			r.Subject = "/elsewhere"
			r.Hash = r.computeHash()
			putRec(t, tx, 23, r)
		}, 23}, // the stale subject index names it; the chain breaks at 24
		{"flip a byte", func(t *testing.T, tx *bolt.Tx) {
			v := append([]byte{}, tx.Bucket(bucketRecords).Get(seqKey(7))...)
			v[len(v)-40] ^= 1
			tx.Bucket(bucketRecords).Put(seqKey(7), v)
		}, 7},
		{"delete a record", func(t *testing.T, tx *bolt.Tx) {
			tx.Bucket(bucketRecords).Delete(seqKey(30))
		}, 30},
		{"swap two records", func(t *testing.T, tx *bolt.Tx) {
			a, b := getRec(t, tx, 12), getRec(t, tx, 13)
			putRec(t, tx, 12, b)
			putRec(t, tx, 13, a)
		}, 12},
		{"insert a record (rewriting the rest of the chain)", func(t *testing.T, tx *bolt.Tx) {
			// The strongest insert without the key: renumber 26..50 and
			// rehash the chain from there. Only the signed heads catch it.
			prev := getRec(t, tx, 25)
			tip := tip{seq: 25, hash: prev.Hash, time: prev.Time}
			old := []Record{}
			for s := uint64(26); s <= 50; s++ {
				old = append(old, getRec(t, tx, s))
			}
			ins := rec("fetched", "ns", "p", OK)
			ins.Node = "node-a"
			for _, r := range append([]Record{ins}, old...) {
				if err := appendTx(tx, &tip, &r, r.Time); err != nil {
					t.Fatal(err)
				}
			}
		}, 26}, // stale index entries name 26; the signed head at 30 fails too
		{"drop the tail", func(t *testing.T, tx *bolt.Tx) {
			for s := uint64(41); s <= 50; s++ {
				tx.Bucket(bucketRecords).Delete(seqKey(s))
			}
		}, 41},
		{"forge a head with another key", func(t *testing.T, tx *bolt.Tx) {
			var h Head
			json.Unmarshal(tx.Bucket(bucketHeads).Get(seqKey(50)), &h)
			h.Sig, _ = other.SignDigest(context.Background(), h.Digest())
			h.KeyHint = key.KeyHint() // lying about the key does not help
			b, _ := json.Marshal(h)
			tx.Bucket(bucketHeads).Put(seqKey(50), b)
		}, 50},
		// Rewriting a record's unindexed detail and re-chaining every
		// record after it keeps the chain and the indexes consistent; only
		// the signed heads from there on betray it, so they are removed.
		// What is left is an unsigned tail longer than the cadence allows.
		{"rewrite a record, re-chain, remove every head", func(t *testing.T, tx *bolt.Tx) {
			rewriteFrom(t, tx, 23)
			removeHeadsFrom(t, tx, 1)
		}, 1},
		{"rewrite a record, re-chain, remove the heads after it", func(t *testing.T, tx *bolt.Tx) {
			rewriteFrom(t, tx, 23)
			removeHeadsFrom(t, tx, 21)
		}, 21},
		{"hide a record from queries", func(t *testing.T, tx *bolt.Tx) {
			r := getRec(t, tx, 17)
			tx.Bucket(bucketIndex).Delete(append(valuePrefix(idxPod, r.Pod), seqKey(17)...))
		}, 17},
		{"plant an index entry", func(t *testing.T, tx *bolt.Tx) {
			tx.Bucket(bucketIndex).Put(append(valuePrefix(idxNamespace, "payments"), seqKey(5)...), nil)
		}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := buildTampered(t, key, tc.edit)
			f, bad := rep.FirstBad()
			if tc.firstAt == 0 {
				if bad {
					t.Fatalf("untouched log has findings: %v", rep.Findings)
				}
				return
			}
			if !bad {
				t.Fatalf("tampering not detected: %+v", rep)
			}
			if f.Seq != tc.firstAt {
				t.Fatalf("first bad seq %d, want %d; findings %v", f.Seq, tc.firstAt, rep.Findings)
			}
			t.Logf("detected: %v", f)
		})
	}
}

// TestUnsignedTailCadence: a tail of unsigned records is fine within the
// signing cadence (a crash leaves one), a finding beyond it, and signed as
// soon as the log is opened again.
func TestUnsignedTailCadence(t *testing.T) {
	key := newTestKey(t)
	ctx := context.Background()
	// No signer: what a writer killed before its next head leaves.
	l, path := openTest(t, key, func(o *Options) { o.Signer = nil; o.SignEvery = 1000 })
	for range 3 {
		if _, err := l.Append(ctx, rec("uploaded", "ns", "p", OK)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := l.Append(ctx, rec("uploaded", "ns", "p", OK)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	verify := func(interval time.Duration) *Report {
		t.Helper()
		ro, err := OpenReadOnlyOptions(path, Options{SignEvery: 1000, SignInterval: interval})
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		rep, err := ro.Verify(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := verify(time.Minute); !rep.OK() || rep.Unsigned != 4 {
		t.Fatalf("4 unsigned records within a minute's cadence: %+v", rep)
	}
	if rep := verify(100 * time.Millisecond); rep.OK() {
		t.Fatalf("4 unsigned records spanning 300ms passed a 100ms cadence: %+v", rep)
	} else {
		t.Logf("detected: %v", rep.Findings[0])
	}

	// Opened again with its key, the log signs the tail at once, not at
	// the first tick an hour later.
	l, err := Open(path, Options{Node: "node-a", Signer: key, Verifier: key, SignEvery: 1000, SignInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err := l.Verify(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Unsigned == 0 && rep.OK() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reopened log did not sign its tail: %+v", rep)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
