package audit

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
)

func TestExportAndReadStore(t *testing.T) {
	key := newTestKey(t)
	st, err := filestore.New(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, node := range []string{"node-a", "node-b"} {
		l, _ := openTest(t, key, func(o *Options) { o.Node = node; o.SignEvery = 1 << 30; o.SignInterval = time.Hour })
		for i := 1; i <= 25; i++ {
			if _, err := l.Append(ctx, rec("uploaded", "payments", "p", OK)); err != nil {
				t.Fatal(err)
			}
			if i%5 == 0 {
				l.SignHead(ctx)
			}
		}
		l.Append(ctx, rec("fetched", "payments", "p", OK)) // unsigned: not exported yet
		res, err := l.Export(ctx, st, ExportOptions{MaxRecords: 12, Retention: store.Retention{}})
		if err != nil {
			t.Fatal(err)
		}
		// Heads at 5..25, at most 12 records a segment: 1-10, 11-20, 21-25.
		if len(res.Keys) != 3 || res.Through != 25 || res.Keys[0] != SegmentKey(node, 1, 10) {
			t.Fatalf("export: %+v", res)
		}
		// Idempotent: nothing new to do.
		if res, err := l.Export(ctx, st, ExportOptions{}); err != nil || len(res.Keys) != 0 {
			t.Fatalf("second export: %+v %v", res, err)
		}
		// Resumable: forget the progress of the last segment; the rerun
		// finds the identical object and moves on.
		l.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaExported, seqKey(20)) })
		if res, err := l.Export(ctx, st, ExportOptions{}); err != nil || len(res.Keys) != 1 {
			t.Fatalf("resumed export: %+v %v", res, err)
		}
		if n, _ := l.Exported(); n != 25 {
			t.Fatalf("exported through %d, want 25", n)
		}
		l.Close()
	}
	trail, err := ReadStore(ctx, st, key)
	if err != nil {
		t.Fatal(err)
	}
	if !trail.Report.OK() || len(trail.Nodes) != 2 || trail.Report.Records != 50 {
		t.Fatalf("store trail: %+v", trail.Report)
	}
	p, err := trail.Query(Filter{Namespace: "payments", Limit: 30, Newest: true})
	if err != nil || len(p.Records) != 30 || p.Next == "" {
		t.Fatalf("store query: %d %v", len(p.Records), err)
	}

	// Tamper with a stored segment: replace a record's subject.
	k := SegmentKey("node-b", 11, 20)
	obj, _ := st.Open(ctx, k)
	b, _ := io.ReadAll(obj)
	obj.Close()
	bad := bytes.Replace(b, []byte(`"subject":"/var/lib/kubelet/checkpoints/x.tar"`), []byte(`"subject":"/var/lib/kubelet/checkpoints/y.tar"`), 1)
	st.Delete(ctx, k, "")
	st.Put(ctx, k, bytes.NewReader(bad), int64(len(bad)), store.PutOptions{})
	// And drop node-a's middle segment.
	st.Delete(ctx, SegmentKey("node-a", 11, 20), "")
	trail, err = ReadStore(ctx, st, key)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, f := range trail.Report.Findings {
		msgs = append(msgs, f.String())
	}
	all := strings.Join(msgs, "\n")
	if !strings.Contains(all, "node node-a seq 11: segments for records 11 to 20 are missing") ||
		!strings.Contains(all, "node node-b seq 11: segment audit/node-b/") {
		t.Fatalf("findings:\n%s", all)
	}
	t.Logf("findings:\n%s", all)
}

func TestExportRefusesConflictingSegment(t *testing.T) {
	key := newTestKey(t)
	st, _ := filestore.New(filepath.Join(t.TempDir(), "store"))
	ctx := context.Background()
	l, _ := openTest(t, key, nil)
	defer l.Close()
	l.Append(ctx, rec("uploaded", "ns", "p", OK))
	l.SignHead(ctx)
	other := []byte("something else\n")
	st.Put(ctx, SegmentKey("node-a", 1, 1), bytes.NewReader(other), int64(len(other)), store.PutOptions{})
	_, err := l.Export(ctx, st, ExportOptions{})
	if err == nil || !strings.Contains(err.Error(), "differs from the local log") {
		t.Fatalf("got %v", err)
	}
}

// TestForgedSegmentNeverShows: whoever can write to the store can write a
// well-formed segment, chained and with a head, but cannot sign it with a
// trusted key. Its records are a finding, never part of the trail a query
// reads.
func TestForgedSegmentNeverShows(t *testing.T) {
	key, forger := newTestKey(t), newTestKey(t)
	st, err := filestore.New(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	export := func(node string, k *testKey, action string) {
		l, _ := openTest(t, k, func(o *Options) { o.Node = node; o.Verifier = k })
		for range 5 {
			if _, err := l.Append(ctx, rec(action, "payments", "p", OK)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := l.SignHead(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Export(ctx, st, ExportOptions{}); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	export("node-a", key, "uploaded")
	export("node-forged", forger, "deleted")
	// A checkpoint of a Kubernetes namespace named "audit" shares the
	// prefix; it is neither a segment nor a finding.
	ck := "audit/api-0/server/20261130T120000Z-node-a-0123456789abcdef.tar.age"
	if _, err := st.Put(ctx, ck, strings.NewReader("age"), 3, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}

	trail, err := ReadStore(ctx, st, key)
	if err != nil {
		t.Fatal(err)
	}
	if trail.Report.OK() {
		t.Fatal("a segment signed by an untrusted key verified")
	}
	p, err := trail.Query(Filter{Limit: MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range p.Records {
		if r.Node == "node-forged" {
			t.Fatalf("the forged segment's record %d shows in the trail: %+v", r.Seq, r)
		}
	}
	if len(p.Records) != 5 {
		t.Fatalf("%d records, want node-a's 5", len(p.Records))
	}
	if len(trail.Report.Findings) != 1 {
		t.Fatalf("findings %v, want exactly the forged segment's", trail.Report.Findings)
	}
	f, _ := trail.Report.FirstBad()
	if f.Node != "node-forged" || !strings.Contains(f.Problem, "not shown") {
		t.Fatalf("finding %v, want one naming node-forged's segment and that its records are not shown", f)
	}
}
