package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/hostiletar"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

func TestPrescan(t *testing.T) {
	good := func(o samplearchive.Options) []byte { return archiveBytes(t, o) }
	crio := good(samplearchive.Options{Namespace: "ns-a", Pod: "p", Container: "c-1"})
	for _, tt := range []struct {
		name   string
		b      []byte
		reason admit.Reason
	}{
		{"crio", crio, ""},
		{"containerd dot-slash", good(samplearchive.Options{Engine: samplearchive.Containerd, DotSlash: true, Namespace: "ns-a", Pod: "p", Container: "c-1"}), ""},
		{"empty", nil, admit.ReasonTruncated},
		{"text", bytes.Repeat([]byte("hello "), 400), admit.ReasonNotACheckpoint},
		{"cut mid-member", crio[:len(crio)-3000], admit.ReasonTruncated},
		{"no end marker", crio[:len(crio)-1024], admit.ReasonTruncated},
		{"no config.dump", good(samplearchive.Options{Omit: []string{"config.dump"}}), admit.ReasonNotACheckpoint},
		{"no checkpoint dir", good(samplearchive.Options{Omit: []string{"checkpoint/"}}), admit.ReasonNotACheckpoint},
		{"bad spec", good(samplearchive.Options{Override: map[string][]byte{"spec.dump": []byte("{")}}), admit.ReasonNotACheckpoint},
	} {
		t.Run(tt.name, func(t *testing.T) {
			info, err := prescan(context.Background(), bytes.NewReader(tt.b), int64(len(tt.b)))
			if got := admit.ReasonOf(err); got != tt.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, tt.reason)
			}
			if err == nil && (info.Identity != checkpoint.Identity{Namespace: "ns-a", Pod: "p", Container: "c-1"}) {
				t.Fatalf("identity %v", info.Identity)
			}
		})
	}
}

// TestPrescanHostile: the pre-scan applies the parser's member rules, so a
// hostile archive is refused before a byte of it is sealed, and a stop
// interrupts it.
func TestPrescanHostile(t *testing.T) {
	base := archiveBytes(t, samplearchive.Options{Namespace: "ns-a", Pod: "p", Container: "c-1"})
	pre := func(m ...[]byte) []byte { return append(bytes.Join(m, nil), base...) }
	for _, tt := range []struct {
		name   string
		b      []byte
		reason admit.Reason
	}{
		{"gnu sparse 8 TiB", pre(hostiletar.GNUSparse("checkpoint/pages-9.img", 8<<40, []byte("x"))), admit.ReasonNotACheckpoint},
		{"pax sparse 1.0", pre(hostiletar.PAXSparse("1.0", "checkpoint/pages-9.img", 8<<40, []byte("x"))), admit.ReasonNotACheckpoint},
		{"pax sparse 0.1 last", append(base[:len(base)-1024:len(base)-1024],
			append(hostiletar.PAXSparse("0.1", "zz", 8<<40, []byte("x")), make([]byte, 1024)...)...), admit.ReasonNotACheckpoint},
		{"1 MB pax name", pre(hostiletar.LongPAXName("extra/", 1_000_000)), admit.ReasonNotACheckpoint},
		{"fifo", pre(hostiletar.Raw("extra/fifo", tar.TypeFifo, 0, nil)), admit.ReasonNotACheckpoint},
		{"declares 1 TiB", pre(hostiletar.Raw("extra/big", tar.TypeReg, 1<<40, nil)), admit.ReasonTruncated},
		{"symlink", pre(hostiletar.Raw("extra/sym", tar.TypeSymlink, 0, nil)), admit.ReasonNotACheckpoint},
		{"huge pax header", pre(hostiletar.PAX(hostiletar.Record("comment", strings.Repeat("c", 1<<20-100))),
			hostiletar.Raw("extra/x", tar.TypeReg, 0, nil)), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := prescan(context.Background(), bytes.NewReader(tt.b), int64(len(tt.b)))
			if got := admit.ReasonOf(err); got != tt.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, tt.reason)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := prescan(ctx, bytes.NewReader(base), int64(len(base))); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled pre-scan: %v", err)
	}
}

// failingReaderAt fails every read past byte after with EIO.
type failingReaderAt struct {
	r     io.ReaderAt
	after int64
}

func (f failingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.after {
		return 0, syscall.EIO
	}
	return f.r.ReadAt(p, off)
}

// TestPrescanReadError: a disk error during the pre-scan is an I/O error
// (the daemon retries), not a verdict that the archive is not a checkpoint.
func TestPrescanReadError(t *testing.T) {
	b := archiveBytes(t, samplearchive.Options{})
	_, err := prescan(context.Background(), failingReaderAt{bytes.NewReader(b), 2048}, int64(len(b)))
	if r := admit.ReasonOf(err); r != admit.ReasonIO || !errors.Is(err, syscall.EIO) {
		t.Fatalf("reason %q (%v), want %q wrapping EIO", r, err, admit.ReasonIO)
	}
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.bytes += int64(n)
	return n, err
}

// FuzzPrescan: the pre-scan must never panic, must read no more than the
// archive (each byte at most once, plus the end marker), and must accept —
// with the same identity — every archive the full one-pass parser accepts
// (else a valid checkpoint could never be vaulted, or be encrypted to the
// wrong namespace's recipients).
func FuzzPrescan(f *testing.F) {
	// The smallest archives that pass: only the members the parsers
	// require (about 5.5 KB; every exec and every minimization step costs
	// in proportion to the input).
	minimal := []string{"stats-dump", "dump.log", "rootfs-diff.tar", "bind.mounts", "deleted.files",
		"checkpoint/inventory.img", "checkpoint/pstree.img"}
	small := archiveBytes(f, samplearchive.Options{MemoryBytes: -1, Omit: minimal})
	f.Add(small)
	f.Add(archiveBytes(f, samplearchive.Options{Engine: samplearchive.Containerd, DotSlash: true, MemoryBytes: 16, Omit: minimal}))
	f.Add([]byte("not a tar"))
	for _, s := range hostiletar.Seeds(small) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cr := &countingReaderAt{r: bytes.NewReader(b)}
		pre, perr := prescan(context.Background(), cr, int64(len(b)))
		if cr.bytes > int64(len(b))+1024 {
			t.Fatalf("pre-scan read %d bytes of a %d-byte archive", cr.bytes, len(b))
		}
		full, ferr := checkpoint.Parse(bytes.NewReader(b), checkpoint.Limits{})
		if ferr == nil {
			if perr != nil {
				t.Fatalf("full parser accepts, pre-scan rejects: %v", perr)
			}
			if pre.Identity != full.Identity || pre.ContainerID != full.ContainerID || !pre.Checkpointed.Equal(full.Checkpointed) {
				t.Fatalf("pre-scan identity %v differs from the stream's %v", pre.Identity, full.Identity)
			}
		}
	})
}
