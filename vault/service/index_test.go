package service

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
)

// TestListDecidesOutsideTransactions: a listing asks the authoriser about
// each namespace it meets — a SubjectAccessReview over the network, which
// may take seconds — with no index transaction open. A read transaction
// held across it would stall the index refresh's writes whenever the
// database grows (bbolt remaps only once every reader is done), and every
// request behind them. The listing still shows exactly the entries of the
// namespaces allowed, in order, page by page.
func TestListDecidesOutsideTransactions(t *testing.T) {
	x := openTestIndex(t)
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var entries []remote.Checkpoint
	for _, ns := range []string{"alpha", "bravo", "bravo-x", "charlie", "delta"} {
		for i := range 3 {
			base := fmt.Sprintf("%s/pod/app/%s-node-a-%016x", ns, t0.Add(time.Duration(i)*time.Second).Format("20060102T150405Z"), i)
			entries = append(entries, remote.Checkpoint{ID: fmt.Sprintf("%016x", i), Base: base, Namespace: ns, Pod: "pod", Container: "app",
				Node: "node-a", Checkpointed: t0, Verified: true, Manifest: []byte("{}")})
		}
	}
	if err := x.Put(entries...); err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"alpha": true, "bravo-x": true, "delta": true}
	asked := map[string]int{}
	visible := func(ns string) (bool, error) {
		if n := x.db.Stats().OpenTxN; n != 0 {
			t.Errorf("asked about namespace %s with %d index read transactions open", ns, n)
		}
		asked[ns]++
		return allowed[ns], nil
	}
	var got []string
	q := Query{Limit: 2}
	for page := 0; ; page++ {
		items, next, err := x.List(q, visible)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			var e entryMeta
			if err := json.Unmarshal(it, &e); err != nil {
				t.Fatal(err)
			}
			got = append(got, e.Namespace)
		}
		if next == "" {
			break
		}
		if page > 20 {
			t.Fatal("listing does not end")
		}
		q.After = next
	}
	want := "[alpha alpha alpha bravo-x bravo-x bravo-x delta delta delta]"
	if fmt.Sprint(got) != want {
		t.Errorf("listed namespaces %v, want %s", got, want)
	}
	for ns, n := range asked {
		if n > 8 {
			t.Errorf("asked about %s %d times across 8 pages", ns, n)
		}
	}
}

// openTestIndex opens an empty index over an empty file store; it is
// closed when the test ends.
func openTestIndex(tb testing.TB) *Index {
	tb.Helper()
	st, err := filestore.New(tb.TempDir())
	must(tb, err)
	x, err := OpenIndex(filepath.Join(tb.TempDir(), "index.db"), st, nil, slog.Default())
	must(tb, err)
	tb.Cleanup(func() { x.Close() })
	return x
}
