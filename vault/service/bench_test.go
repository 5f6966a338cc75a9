package service

import (
	"fmt"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// BenchmarkIndexListNamespace lists one namespace (100 checkpoints) among
// N indexed checkpoints in N/100 namespaces, entries of realistic size (a
// 1.5 KiB manifest and 3 signatures), with the caller allowed everything.
// Compare BenchmarkList in vault/responder (direct from the store, every
// manifest read and verified: about 5 ms per checkpoint).
func BenchmarkIndexListNamespace(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			x := openTestIndex(b)
			man := make([]byte, 1500)
			sig := make([]byte, 100)
			bundle := make([]byte, 1500)
			batch := make([]remote.Checkpoint, 0, 1000)
			t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
			for i := range n {
				ns := fmt.Sprintf("ns-%04d", i%(n/100))
				base := fmt.Sprintf("%s/pod-%d/app/%s-node-a-%016x", ns, i/(n/100), t0.Add(time.Duration(i)*time.Second).Format("20060102T150405Z"), i)
				batch = append(batch, remote.Checkpoint{ID: fmt.Sprintf("%016x", i), Base: base, Namespace: ns, Pod: fmt.Sprintf("pod-%d", i/(n/100)),
					Container: "app", Node: "node-a", Checkpointed: t0, Verified: true, Size: 1 << 20, SHA256: "00",
					Objects:  []remote.Object{{Key: base + ".tar.age", Size: 1 << 20}, {Key: base + ".manifest.json", Size: 1500}},
					Manifest: man, Signatures: map[string][]byte{".manifest.sig": sig, ".manifest.sigstore.json": bundle, ".sig": sig}})
				if len(batch) == cap(batch) {
					if err := x.Put(batch...); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			all := func(string) (bool, error) { return true, nil }
			b.ResetTimer()
			for b.Loop() {
				items, _, err := x.List(Query{Namespace: "ns-0042", Limit: MaxPageSize}, all)
				if err != nil || len(items) != 100 {
					b.Fatalf("%d items, %v", len(items), err)
				}
			}
		})
	}
}
