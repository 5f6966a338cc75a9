package responder

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
)

// BenchmarkFetch measures in-process fetch + verify + decrypt of a 256 MiB
// checkpoint from the local MinIO over TLS into a file, for profiling
// (the end-to-end comparison with curl + age is BenchmarkFetch1GiB in
// cmd/ckvault).
func BenchmarkFetch(b *testing.B) {
	e := newEnv(b, string(testservers.MinIO))
	p := filepath.Join(b.TempDir(), samplearchive.Filename(samplearchive.Options{}))
	if err := samplearchive.WriteFile(p, samplearchive.Options{MemoryBytes: 256 << 20}); err != nil {
		b.Fatal(err)
	}
	m, _, err := testvault.Put(context.Background(), e.st, e.keys, p, "node-a")
	if err != nil {
		b.Fatal(err)
	}
	ids := []age.Identity{e.keys.Identity}
	b.Run("file", func(b *testing.B) {
		out := filepath.Join(b.TempDir(), "out.tar")
		b.SetBytes(m.Plaintext.Size)
		for b.Loop() {
			if _, err := e.r.Fetch(context.Background(), m.Object, out, FetchOptions{Identities: ids, Force: true}); err != nil {
				b.Fatal(err)
			}
		}
		os.Remove(out)
	})
	// Without the output file: the download, both digests and decryption
	// alone, which shows how much of "file" is the disk.
	b.Run("discard", func(b *testing.B) {
		b.SetBytes(m.Plaintext.Size)
		for b.Loop() {
			if _, err := e.r.FetchStream(context.Background(), m.Object, io.Discard, FetchOptions{Identities: ids}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
