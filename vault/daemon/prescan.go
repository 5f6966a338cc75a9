package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// Why a pre-scan: the recipients depend on the namespace and the object key
// on the identity (namespace, pod, container, container id, checkpoint
// time), but encryption and upload start with the first byte, and spec.dump
// usually comes after the CRIU images (tar members are in directory-walk
// order, and "checkpoint/" sorts before "spec.dump"). The kubelet's file name
// cannot settle it ("<namespace>-<container>" does not split reliably).
//
// So, under the admission lease and before the one pass, the daemon walks the
// tar headers with positioned reads, seeking over member contents, and reads
// only config.dump and spec.dump (bounded by the inspector's dump limit):
// a few KiB of an archive of gigabytes, none of it hashed, encrypted or
// uploaded. The one pass then parses the whole stream again with the
// checkpoint inspector, which is authoritative: if its identity differs from
// the pre-scan's (a hostile archive with two spec.dump members, say), the
// uploaded ciphertext is deleted and the archive is rejected.

// prescan reads the identity of the archive in r (size bytes) from its tar
// headers and dump members. Errors wrap the checkpoint package's sentinels,
// so admit.ReasonOf classifies them; an error for which ctx.Err() is set is
// a cancellation and one that admit.ReasonOf calls ReasonIO a read error of
// the file: neither is a verdict on the archive.
//
// The work is bounded by the archive's size on disk: every header passes
// checkpoint.CheckHeader (the same member rules and limits as the one pass:
// no sparse members, bounded names and member count), member contents are
// seeked over, and only the two dumps are read, within the dump limit. Each
// read checks ctx, so a stop interrupts even a walk of a million headers.
func prescan(ctx context.Context, r io.ReaderAt, size int64) (*checkpoint.Info, error) {
	lim := checkpoint.Limits{}.WithDefaults() // the inspector's limits: one rule for both readers
	ra := &guardedReaderAt{ctx: ctx, r: r}
	sr := io.NewSectionReader(ra, 0, size)
	tr := tar.NewReader(sr)
	var config, spec []byte
	haveCheckpointDir := false
	// end is where the last member's padded content ends: the end-of-archive
	// marker must start there.
	var end int64
	for members := 0; ; members++ {
		h, err := tr.Next()
		if err == io.EOF {
			// archive/tar also reports a clean EOF for a file cut at a
			// header boundary: require the end-of-archive marker.
			if err := checkEndMarker(r, end, size); err != nil {
				return nil, err
			}
			break
		}
		if err != nil {
			if ra.err != nil {
				return nil, ra.failed()
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("%w: %v", checkpoint.ErrTruncated, err)
			}
			return nil, fmt.Errorf("%w: %v", checkpoint.ErrNotTar, err)
		}
		if members >= lim.MaxMembers {
			return nil, fmt.Errorf("%w: more than %d members", checkpoint.ErrTooLarge, lim.MaxMembers)
		}
		dataSize, err := checkpoint.CheckHeader(h, lim)
		if err != nil {
			return nil, err
		}
		dataStart, _ := sr.Seek(0, io.SeekCurrent)
		end = dataStart + (dataSize+511)&^511
		if end > size {
			return nil, fmt.Errorf("%w: member %.64q claims %d bytes of data at byte %d of a %d-byte file",
				checkpoint.ErrTruncated, h.Name, dataSize, dataStart, size)
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case name == checkpoint.ConfigDumpFile || name == checkpoint.SpecDumpFile:
			if h.Typeflag != tar.TypeReg {
				return nil, fmt.Errorf("%w: %s is not a regular file", checkpoint.ErrNotCheckpoint, name)
			}
			if h.Size > lim.MaxDumpSize {
				return nil, fmt.Errorf("%w: %s is %d bytes", checkpoint.ErrTooLarge, name, h.Size)
			}
			if (name == checkpoint.ConfigDumpFile && config != nil) || (name == checkpoint.SpecDumpFile && spec != nil) {
				return nil, fmt.Errorf("%w: %s appears twice", checkpoint.ErrNotCheckpoint, name)
			}
			b, err := io.ReadAll(io.LimitReader(tr, lim.MaxDumpSize))
			if err != nil {
				if ra.err != nil {
					return nil, ra.failed()
				}
				return nil, fmt.Errorf("%w: reading %s: %v", checkpoint.ErrTruncated, name, err)
			}
			if name == checkpoint.ConfigDumpFile {
				config = b
			} else {
				spec = b
			}
		case name == checkpoint.CheckpointDir || strings.HasPrefix(name, checkpoint.CheckpointDir):
			haveCheckpointDir = true
		}
	}
	if !haveCheckpointDir || config == nil || spec == nil {
		return nil, fmt.Errorf("%w: %s, %s and %s are required", checkpoint.ErrNotCheckpoint,
			checkpoint.CheckpointDir, checkpoint.ConfigDumpFile, checkpoint.SpecDumpFile)
	}
	// Parse a miniature archive of just these members with the same parser
	// the one pass uses, so identity rules live in one place.
	var mini bytes.Buffer
	tw := tar.NewWriter(&mini)
	tw.WriteHeader(&tar.Header{Name: checkpoint.CheckpointDir, Typeflag: tar.TypeDir, Mode: 0o700})
	for _, m := range []struct {
		name string
		b    []byte
	}{{checkpoint.ConfigDumpFile, config}, {checkpoint.SpecDumpFile, spec}} {
		tw.WriteHeader(&tar.Header{Name: m.name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(m.b))})
		tw.Write(m.b)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("pre-scan: %w", err)
	}
	return checkpoint.Parse(&mini, checkpoint.Limits{})
}

// guardedReaderAt fails every read once ctx is done, and remembers the
// first failure of the file or the context, so that neither is mistaken
// for a verdict on the archive's bytes.
type guardedReaderAt struct {
	ctx context.Context
	r   io.ReaderAt
	err error
}

func (g *guardedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := context.Cause(g.ctx); err != nil {
		g.err = err
		return 0, err
	}
	n, err := g.r.ReadAt(p, off)
	if err != nil && err != io.EOF && g.err == nil {
		g.err = fmt.Errorf("at byte %d: %w", off, err)
	}
	return n, err
}

// failed is the error for a pre-scan that stopped on g.err: a
// cancellation, or a read error (admit.ReasonIO, worth a retry).
func (g *guardedReaderAt) failed() error {
	if cerr := context.Cause(g.ctx); cerr != nil {
		return fmt.Errorf("pre-scan stopped: %w", cerr)
	}
	return fmt.Errorf("pre-scan: reading the archive %w", g.err)
}

// checkEndMarker requires two zero blocks at pos.
func checkEndMarker(r io.ReaderAt, pos, size int64) error {
	if pos+1024 > size {
		return fmt.Errorf("%w: ends at byte %d", checkpoint.ErrTruncated, size)
	}
	var b [1024]byte
	if _, err := r.ReadAt(b[:], pos); err != nil {
		return fmt.Errorf("%w: reading the end marker: %v", checkpoint.ErrTruncated, err)
	}
	for _, c := range b {
		if c != 0 {
			return fmt.Errorf("%w: no end-of-archive marker at byte %d", checkpoint.ErrNotTar, pos)
		}
	}
	return nil
}
