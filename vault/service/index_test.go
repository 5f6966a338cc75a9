package service

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
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

// TestIndexBoundsSmallObjects: the index reads a checkpoint's manifest and
// signatures whole, so each is bounded by what a real one can be
// (manifest.MaxSize, manifest.MaxSignatureSize): one a byte larger is the
// entry's problem, not bytes the service holds; one at the bound is read.
func TestIndexBoundsSmallObjects(t *testing.T) {
	st, err := filestore.New(t.TempDir())
	must(t, err)
	put := func(key string, size int) {
		t.Helper()
		_, err := st.Put(context.Background(), key, bytes.NewReader(make([]byte, size)), int64(size), store.PutOptions{})
		must(t, err)
	}
	const prefix = "web/pod/app/20260301T000000Z-node-a-"
	bigManifest, bigSig, atBound := prefix+"00000000000000aa", prefix+"00000000000000bb", prefix+"00000000000000cc"
	put(bigManifest+manifest.SuffixManifest, manifest.MaxSize+1)
	put(bigSig+manifest.SuffixManifest, 100)
	put(bigSig+manifest.SuffixManifestSig, manifest.MaxSignatureSize+1)
	put(atBound+manifest.SuffixManifest, 100)
	put(atBound+manifest.SuffixManifestSig, manifest.MaxSignatureSize)
	x, err := OpenIndex(filepath.Join(t.TempDir(), "index.db"), st, nil, slog.Default())
	must(t, err)
	t.Cleanup(func() { x.Close() })
	if _, err := x.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	for base, tooLarge := range map[string]string{bigManifest: manifest.SuffixManifest, bigSig: manifest.SuffixManifestSig, atBound: ""} {
		e, ok, err := x.Get(base)
		if err != nil || !ok {
			t.Fatalf("%s: not indexed (%v)", base, err)
		}
		said := strings.Contains(e.Problem, "more than a real one can be")
		switch {
		case tooLarge != "" && (!said || !strings.Contains(e.Problem, base+tooLarge)):
			t.Errorf("%s: problem %q, want %s named as too large", base, e.Problem, tooLarge)
		case tooLarge == "" && said:
			t.Errorf("%s: problem %q for a signature at the bound", base, e.Problem)
		case tooLarge == "" && len(e.Signatures[manifest.SuffixManifestSig]) != manifest.MaxSignatureSize:
			t.Errorf("%s: the signature at the bound was not read (%d bytes)", base, len(e.Signatures[manifest.SuffixManifestSig]))
		}
	}
}
