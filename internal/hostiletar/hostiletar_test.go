package hostiletar

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// TestShapes: archive/tar reads each fixture as the shape it claims to be,
// so the tests built on them exercise what they say.
func TestShapes(t *testing.T) {
	const logical = 8 << 40 // 8 TiB of holes
	data := []byte("tail")
	for _, tt := range []struct {
		name     string
		b        []byte
		typeflag byte
		size     int64
		sparse   bool
	}{
		{"gnu sparse", GNUSparse("s", logical, data), tar.TypeGNUSparse, logical, true},
		{"pax sparse 0.0", PAXSparse("0.0", "s", logical, data), tar.TypeReg, logical, true},
		{"pax sparse 0.1", PAXSparse("0.1", "s", logical, data), tar.TypeReg, logical, true},
		{"pax sparse 1.0", PAXSparse("1.0", "s", logical, data), tar.TypeReg, logical, true},
		{"long pax name", LongPAXName("x/", 1<<20-100), tar.TypeReg, 0, false},
		{"long gnu name", LongGNUName("x/", 100_000), tar.TypeReg, 0, false},
		{"fifo", Raw("f", tar.TypeFifo, 0, nil), tar.TypeFifo, 0, false},
		{"huge declared", Raw("h", tar.TypeReg, 1<<40, nil), tar.TypeReg, 1 << 40, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := tar.NewReader(bytes.NewReader(append(tt.b, make([]byte, 1024)...)))
			h, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag != tt.typeflag || h.Size != tt.size {
				t.Fatalf("type %q size %d, want %q %d", h.Typeflag, h.Size, tt.typeflag, tt.size)
			}
			if tt.sparse {
				// Read the last bytes through the holes' end: a seek is
				// not available, so only check the first hole block.
				buf := make([]byte, 4096)
				if _, err := io.ReadFull(tr, buf); err != nil || !bytes.Equal(buf, make([]byte, 4096)) {
					t.Fatalf("the hole does not read as zeros: %v", err)
				}
				if h.Name != "s" {
					t.Errorf("name %q", h.Name)
				}
			}
		})
	}
}
