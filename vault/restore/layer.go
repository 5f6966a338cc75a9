package restore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// ErrLayerChanged: the archive read while building or pushing the image is
// not the one that was verified.
var ErrLayerChanged = fmt.Errorf("archive changed after verification")

// archiveLayer is a v1.Layer whose bytes are the archive as it is: an
// uncompressed tar layer, so digest and diff id are both the archive's
// SHA-256. Every reader it hands out re-checks that SHA-256 and the size
// as it reaches the end, so a layer is never written or pushed from bytes
// other than the verified ones, even if the file behind archive changed.
type archiveLayer struct {
	archive io.ReaderAt
	size    int64
	digest  v1.Hash
}

var _ v1.Layer = (*archiveLayer)(nil)

// Layer makes the image layer of an archive whose verified digest is d.
func Layer(archive io.ReaderAt, d manifest.Digest) (v1.Layer, error) {
	h, err := v1.NewHash("sha256:" + d.SHA256)
	if err != nil {
		return nil, fmt.Errorf("archive digest %q: %w", d.SHA256, err)
	}
	return &archiveLayer{archive: archive, size: d.Size, digest: h}, nil
}

func (l *archiveLayer) Digest() (v1.Hash, error) { return l.digest, nil }
func (l *archiveLayer) DiffID() (v1.Hash, error) { return l.digest, nil }
func (l *archiveLayer) Size() (int64, error)     { return l.size, nil }

func (l *archiveLayer) MediaType() (types.MediaType, error) {
	return types.OCIUncompressedLayer, nil
}

func (l *archiveLayer) Compressed() (io.ReadCloser, error) { return l.open(), nil }

func (l *archiveLayer) Uncompressed() (io.ReadCloser, error) { return l.open(), nil }

func (l *archiveLayer) open() io.ReadCloser {
	// One byte past the size is read so that a longer file is noticed.
	return &checkedReader{r: io.NewSectionReader(l.archive, 0, l.size+1), h: sha256.New(), want: l.digest.Hex, size: l.size}
}

// checkedReader passes the archive through and, instead of io.EOF, returns
// ErrLayerChanged if what was read is not size bytes with SHA-256 want.
type checkedReader struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	want string
	size int64
}

func (c *checkedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if c.n > c.size {
		return n, fmt.Errorf("%w: it is longer than the verified %d bytes", ErrLayerChanged, c.size)
	}
	if err == io.EOF {
		if c.n != c.size {
			return n, fmt.Errorf("%w: %d bytes, verified %d", ErrLayerChanged, c.n, c.size)
		}
		if got := hex.EncodeToString(c.h.Sum(nil)); got != c.want {
			return n, fmt.Errorf("%w: sha256 %s, verified %s", ErrLayerChanged, got, c.want)
		}
	}
	return n, err
}

func (c *checkedReader) Close() error { return nil }
