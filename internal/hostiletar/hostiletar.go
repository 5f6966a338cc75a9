// Package hostiletar encodes the tar members a hostile checkpoint archive
// is built from, for tests and fuzz seeds of the readers that must bound
// their work and memory by an archive's size on disk: sparse files in every
// GNU encoding (old 'S', PAX 0.0, 0.1 and 1.0) claiming far more content
// than they store, huge PAX and GNU long names, huge PAX headers, devices,
// and headers that declare more data than follows.
//
// Each function returns whole 512-byte blocks without an end-of-archive
// marker, so members concatenate: writing some of them and then a complete,
// valid archive gives a valid tar whose first members are hostile.
//
// archive/tar's writer refuses to write most of these shapes; the headers
// are laid out by hand after the formats archive/tar reads (its
// format.go documents the offsets used here).
package hostiletar

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Member encodes h and data with archive/tar's writer (PAX or GNU as h.Format
// says), padded, without an end marker. It panics on a header archive/tar
// refuses: fixtures are fixed.
func Member(h *tar.Header, data []byte) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if h.Size == 0 && h.Typeflag == tar.TypeReg {
		h.Size = int64(len(data))
	}
	if err := tw.WriteHeader(h); err != nil {
		panic(fmt.Sprintf("hostiletar: %v", err))
	}
	if _, err := tw.Write(data); err != nil {
		panic(fmt.Sprintf("hostiletar: %v", err))
	}
	if err := tw.Flush(); err != nil {
		panic(fmt.Sprintf("hostiletar: %v", err))
	}
	return b.Bytes()
}

// Raw is a ustar header with any type flag and a declared size independent
// of the data that follows (data is padded to a block).
func Raw(name string, typeflag byte, declaredSize int64, data []byte) []byte {
	blk := header(name, typeflag, declaredSize, false)
	return append(finish(blk), pad(data)...)
}

// GNUSparse is an old-GNU sparse member (type 'S') of logical size logical
// whose only data, data, sits at its end: everything before is a hole that
// reads back as zeros.
func GNUSparse(name string, logical int64, data []byte) []byte {
	blk := header(name, tar.TypeGNUSparse, int64(len(data)), true)
	// One sparse entry at offset 386: offset and length, 12 bytes each.
	numeric(blk[386:398], logical-int64(len(data)))
	numeric(blk[398:410], int64(len(data)))
	numeric(blk[483:495], logical) // real size
	return append(finish(blk), pad(data)...)
}

// PAXSparse is a GNU PAX sparse member in format version "0.0", "0.1" or
// "1.0", of logical size logical, whose only data, data, sits at its end.
func PAXSparse(version, name string, logical int64, data []byte) []byte {
	off, n := strconv.FormatInt(logical-int64(len(data)), 10), strconv.Itoa(len(data))
	var recs []string
	physical := int64(len(data))
	var body []byte
	switch version {
	case "0.0":
		// Offsets and sizes as repeated records, in order.
		recs = []string{Record("GNU.sparse.size", strconv.FormatInt(logical, 10)),
			Record("GNU.sparse.numblocks", "1"), Record("GNU.sparse.offset", off), Record("GNU.sparse.numbytes", n)}
		body = data
	case "0.1":
		recs = []string{Record("GNU.sparse.size", strconv.FormatInt(logical, 10)),
			Record("GNU.sparse.numblocks", "1"), Record("GNU.sparse.map", off+","+n)}
		body = data
	case "1.0":
		// The map is at the start of the data, padded to a block.
		recs = []string{Record("GNU.sparse.major", "1"), Record("GNU.sparse.minor", "0"),
			Record("GNU.sparse.name", name), Record("GNU.sparse.realsize", strconv.FormatInt(logical, 10))}
		body = append(pad([]byte("1\n"+off+"\n"+n+"\n")), data...)
		physical = int64(len(body))
		name = "GNUSparseFile.0/" + name
	default:
		panic("hostiletar: unknown PAX sparse version " + version)
	}
	out := PAX(recs...)
	blk := header(name, tar.TypeReg, physical, false)
	out = append(out, finish(blk)...)
	return append(out, pad(body)...)
}

// PAX is a PAX extended header ('x') carrying the given records (see
// Record); it applies to the member that follows.
func PAX(records ...string) []byte {
	body := []byte(strings.Join(records, ""))
	blk := header("PaxHeaders/x", tar.TypeXHeader, int64(len(body)), false)
	return append(finish(blk), pad(body)...)
}

// Record is one PAX record, "<len> key=value\n", its length counting
// itself.
func Record(key, value string) string {
	n := len(key) + len(value) + 3 // ' ', '=', '\n'
	for l := len(strconv.Itoa(n)); ; {
		total := n + l
		if len(strconv.Itoa(total)) == l {
			return strconv.Itoa(total) + " " + key + "=" + value + "\n"
		}
		l = len(strconv.Itoa(total))
	}
}

// LongPAXName is an empty regular member whose name, in a PAX path record,
// is prefix followed by 'a's to n bytes.
func LongPAXName(prefix string, n int) []byte {
	name := prefix + strings.Repeat("a", n-len(prefix))
	return append(PAX(Record("path", name)), finish(header("long", tar.TypeReg, 0, false))...)
}

// LongGNUName is an empty regular member whose name, in a GNU 'L' header,
// is prefix followed by 'a's to n bytes.
func LongGNUName(prefix string, n int) []byte {
	name := prefix + strings.Repeat("a", n-len(prefix))
	blk := header("././@LongLink", tar.TypeGNULongName, int64(len(name)+1), true)
	out := append(finish(blk), pad(append([]byte(name), 0))...)
	return append(out, finish(header("long", tar.TypeReg, 0, true))...)
}

func header(name string, typeflag byte, size int64, gnu bool) []byte {
	blk := make([]byte, 512)
	copy(blk[0:100], name)
	copy(blk[100:108], "0000644\x00")
	copy(blk[108:116], "0000000\x00")
	copy(blk[116:124], "0000000\x00")
	numeric(blk[124:136], size)
	copy(blk[136:148], "15000000000\x00")
	blk[156] = typeflag
	if gnu {
		copy(blk[257:265], "ustar  \x00")
	} else {
		copy(blk[257:265], "ustar\x0000")
	}
	return blk
}

// numeric writes n as NUL-terminated octal if it fits, else in base-256
// (as GNU tar does for sizes of 8 GiB and more).
func numeric(field []byte, n int64) {
	s := strconv.FormatInt(n, 8)
	if n >= 0 && len(s) < len(field) {
		copy(field, strings.Repeat("0", len(field)-1-len(s))+s+"\x00")
		return
	}
	for i := len(field) - 1; i >= 1; i-- {
		field[i] = byte(n)
		n >>= 8
	}
	field[0] = 0x80
}

// finish writes the checksum of a header block.
func finish(blk []byte) []byte {
	copy(blk[148:156], "        ")
	sum := 0
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return blk
}

func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b[:len(b):len(b)], make([]byte, 512-r)...)
	}
	return b
}

// Seeds are fuzz seeds: base (a small valid archive) preceded by each
// hostile shape, kept small on disk (the sparse members claim 1 GiB).
func Seeds(base []byte) [][]byte {
	const logical = 1 << 30
	tail := []byte("tail")
	var many []byte
	for i := range 64 {
		many = append(many, Raw("checkpoint/m"+strconv.Itoa(i), tar.TypeReg, 0, nil)...)
	}
	shapes := [][]byte{
		GNUSparse("checkpoint/pages-9.img", logical, tail),
		PAXSparse("0.0", "checkpoint/pages-9.img", logical, tail),
		PAXSparse("0.1", "checkpoint/pages-9.img", logical, tail),
		PAXSparse("1.0", "checkpoint/pages-9.img", logical, tail),
		LongPAXName("extra/", 5000),
		LongGNUName("extra/", 5000),
		Raw("extra/fifo", tar.TypeFifo, 0, nil),
		Raw("extra/hard", tar.TypeLink, 1<<40, nil),
		Raw("extra/big", tar.TypeReg, 1<<40, nil),
		append(PAX(Record("comment", strings.Repeat("c", 8000))), Raw("extra/x", tar.TypeReg, 0, nil)...),
		many,
	}
	out := make([][]byte, 0, len(shapes))
	for _, s := range shapes {
		out = append(out, append(s[:len(s):len(s)], base...))
	}
	return out
}
