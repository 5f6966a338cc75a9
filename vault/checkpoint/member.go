package checkpoint

import (
	"archive/tar"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// CheckHeader is the member rule every reader of a checkpoint archive
// applies to each tar header (the one-pass parser and the daemon's
// pre-scan), and returns how many bytes of data follow the header in the
// archive (before padding).
//
// CRI-O and containerd archive a directory of regular files: checkpoint/
// with CRIU's images, the dumps, logs and rootfs-diff.tar (itself a regular
// member; its own contents are not parsed). Only directories and regular
// files are allowed; anything else refuses the archive as ErrMemberType:
//
//   - sparse files, GNU 'S' and PAX GNU.sparse.* (0.0, 0.1 and 1.0): their
//     holes read back as zeros, so a few KiB on disk can claim terabytes of
//     content — the work to read them would not be bounded by the
//     archive's size;
//   - symlinks and hard links, devices and FIFOs, which an unpacking
//     runtime would create on the node (vault/restore refuses them too);
//   - global PAX headers and any other type.
//
// A name or link target longer than lim.MaxNameBytes is ErrTooLarge.
func CheckHeader(h *tar.Header, lim Limits) (dataSize int64, err error) {
	lim = lim.WithDefaults()
	if len(h.Name) > lim.MaxNameBytes {
		return 0, fmt.Errorf("%w: a member name of %d bytes (%s), over the %d-byte limit",
			ErrTooLarge, len(h.Name), quoteShort(h.Name), lim.MaxNameBytes)
	}
	if len(h.Linkname) > lim.MaxNameBytes {
		return 0, fmt.Errorf("%w: member %s links to a name of %d bytes, over the %d-byte limit",
			ErrTooLarge, quoteShort(h.Name), len(h.Linkname), lim.MaxNameBytes)
	}
	var sparseKeys []string
	for k := range h.PAXRecords {
		// Stricter than archive/tar, which treats a member as sparse only
		// with a version or map record: any GNU.sparse.* record refuses it,
		// so no reader has to agree with archive/tar's guess.
		if strings.HasPrefix(k, "GNU.sparse.") {
			sparseKeys = append(sparseKeys, k)
		}
	}
	if len(sparseKeys) > 0 {
		return 0, fmt.Errorf("%w: member %s is a sparse file (PAX %s); checkpoint archives hold only directories and regular files",
			ErrMemberType, quoteShort(h.Name), slices.Min(sparseKeys))
	}
	switch h.Typeflag {
	case tar.TypeReg: // archive/tar reports the old TypeRegA as TypeReg
		return h.Size, nil
	case tar.TypeDir:
		return 0, nil // header-only: archive/tar reads no data whatever Size says
	case tar.TypeGNUSparse:
		return 0, fmt.Errorf("%w: member %s is a GNU sparse file (type 'S'); checkpoint archives hold only directories and regular files",
			ErrMemberType, quoteShort(h.Name))
	case tar.TypeSymlink, tar.TypeLink:
		return 0, fmt.Errorf("%w: member %s is a link (type %q); checkpoint archives hold only directories and regular files",
			ErrMemberType, quoteShort(h.Name), h.Typeflag)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return 0, fmt.Errorf("%w: member %s is a device or FIFO (type %q); checkpoint archives hold only directories and regular files",
			ErrMemberType, quoteShort(h.Name), h.Typeflag)
	default:
		return 0, fmt.Errorf("%w: member %s has tar type %q; checkpoint archives hold only directories and regular files",
			ErrMemberType, quoteShort(h.Name), h.Typeflag)
	}
}

// quoteShort quotes (escaping control characters) at most the first 64
// bytes of a name read from an archive, for an error message.
func quoteShort(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	return strconv.Quote(s[:max]) + "…"
}
