package checkpoint

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/hostiletar"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

// eightTiB is what the sparse members of the issue claim: 8 TiB of holes
// in a few KiB on disk.
const eightTiB = 8 << 40

// parseWithin parses data as the Inspector does (a plain stream) and fails
// the test if the parser has not returned after a minute: before sparse
// members were refused, it expanded their holes for hours.
func parseWithin(t *testing.T, data []byte, lim Limits) (*Info, parseWork, error) {
	t.Helper()
	type res struct {
		info *Info
		work parseWork
		err  error
	}
	done := make(chan res, 1)
	go func() {
		var r res
		r.info, r.err = parseInto(onlyReader{bytes.NewReader(data)}, lim, &r.work)
		done <- r
	}()
	select {
	case r := <-done:
		return r.info, r.work, r.err
	case <-time.After(time.Minute):
		t.Fatalf("the parser did not return within a minute for a %d-byte archive", len(data))
		return nil, parseWork{}, nil
	}
}

func prefixed(t testing.TB, members ...[]byte) []byte {
	base := archive(t, samplearchive.Options{MemoryBytes: 4096})
	return append(bytes.Join(members, nil), base...)
}

// TestHostileMembers: every hostile member shape is refused (with the
// reason an operator can act on) or, when harmless, accepted — and the
// parser's work stays within the bytes it was given.
func TestHostileMembers(t *testing.T) {
	tail := []byte("tail")
	long := func(n int) string { return "extra/" + strings.Repeat("n", n-len("extra/")) }
	for _, tt := range []struct {
		name string
		data []byte
		want error // nil: accepted
		msg  string
	}{
		{"gnu sparse 8 TiB", prefixed(t, hostiletar.GNUSparse("checkpoint/pages-9.img", eightTiB, tail)), ErrMemberType, "GNU sparse"},
		{"pax sparse 0.0", prefixed(t, hostiletar.PAXSparse("0.0", "checkpoint/pages-9.img", eightTiB, tail)), ErrMemberType, "sparse"},
		{"pax sparse 0.1", prefixed(t, hostiletar.PAXSparse("0.1", "checkpoint/pages-9.img", eightTiB, tail)), ErrMemberType, "sparse"},
		{"pax sparse 1.0", prefixed(t, hostiletar.PAXSparse("1.0", "checkpoint/pages-9.img", eightTiB, tail)), ErrMemberType, "sparse"},
		{"pax sparse config.dump", prefixed(t, hostiletar.PAXSparse("0.1", "config.dump", 1<<20, []byte("{}"))), ErrMemberType, "sparse"},
		{"1 MB pax name", prefixed(t, hostiletar.LongPAXName("extra/", 1_000_000)), ErrTooLarge, "member name of 1000000 bytes"},
		{"100 KB gnu name", prefixed(t, hostiletar.LongGNUName("extra/", 100_000)), ErrTooLarge, "member name of 100000 bytes"},
		{"name of 4097 bytes", prefixed(t, hostiletar.LongPAXName("extra/", 4097)), ErrTooLarge, "4096-byte limit"},
		{"name of 4096 bytes", prefixed(t, hostiletar.Member(&tar.Header{Name: long(4096), Typeflag: tar.TypeReg, Format: tar.FormatPAX}, []byte("x"))), nil, ""},
		{"long link target", prefixed(t, hostiletar.Member(&tar.Header{Name: "extra/l", Linkname: long(5000), Typeflag: tar.TypeSymlink, Format: tar.FormatPAX}, nil)), ErrTooLarge, "links to"},
		{"dump as a symlink", prefixed(t, hostiletar.Member(&tar.Header{Name: "spec.dump", Linkname: "/etc/shadow", Typeflag: tar.TypeSymlink}, nil)), ErrMemberType, "link"},
		{"fifo", prefixed(t, hostiletar.Raw("extra/fifo", tar.TypeFifo, 0, nil)), ErrMemberType, "FIFO"},
		{"char device", prefixed(t, hostiletar.Raw("extra/null", tar.TypeChar, 0, nil)), ErrMemberType, "device"},
		{"block device", prefixed(t, hostiletar.Raw("extra/sda", tar.TypeBlock, 0, nil)), ErrMemberType, "device"},
		{"global header", prefixed(t, hostiletar.Raw("pax_global_header", tar.TypeXGlobalHeader, 0, nil)), ErrMemberType, "'g'"},
		{"contiguous file", prefixed(t, hostiletar.Raw("extra/c", tar.TypeCont, 3, []byte("abc"))), ErrMemberType, "'7'"},
		{"symlink", prefixed(t, hostiletar.Raw("extra/sym", tar.TypeSymlink, 0, nil)), ErrMemberType, "link"},
		{"hard link declaring 1 TiB", prefixed(t, hostiletar.Raw("extra/hard", tar.TypeLink, 1<<40, nil)), ErrMemberType, "link"},
		{"regular declaring 1 TiB", prefixed(t, hostiletar.Raw("extra/big", tar.TypeReg, 1<<40, nil)), ErrTruncated, ""},
		{"huge pax header", prefixed(t, hostiletar.PAX(hostiletar.Record("comment", strings.Repeat("c", 1<<20-100))),
			hostiletar.Raw("extra/x", tar.TypeReg, 0, nil)), nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			info, work, err := parseWithin(t, tt.data, Limits{})
			if work.contentBytes > int64(len(tt.data)) {
				t.Errorf("read %d bytes of member content from a %d-byte archive", work.contentBytes, len(tt.data))
			}
			if tt.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if info.ArchiveBytes+info.TrailingBytes != int64(len(tt.data)) {
					t.Errorf("archive %d + trailing %d != %d", info.ArchiveBytes, info.TrailingBytes, len(tt.data))
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q lacks %q", err, tt.msg)
			}
			if len(err.Error()) > 512 {
				t.Errorf("a %d-byte error message: names in errors must be cut short", len(err.Error()))
			}
		})
	}
}

// TestListedNamesBounded: thousands of members with names just under the
// limit are counted, but only MaxListedNameBytes of their names are kept.
func TestListedNamesBounded(t *testing.T) {
	var members [][]byte
	for i := range 2000 {
		members = append(members, hostiletar.LongPAXName(fmt.Sprintf("extra/%04d/", i), 4000))
	}
	data := prefixed(t, members...)
	info, work, err := parseWithin(t, data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, m := range info.Members {
		kept += len(m.Name)
	}
	if lim := (Limits{}).WithDefaults().MaxListedNameBytes; kept > lim || work.listedBytes != kept {
		t.Errorf("kept %d bytes of names (counted %d), over the %d-byte bound", kept, work.listedBytes, lim)
	}
	if info.MemberCount < 2000 {
		t.Errorf("counted %d members", info.MemberCount)
	}
	// The archive's own members come after the hostile ones: they are
	// counted and sized even though no longer listed.
	if info.PagesBytes != 4096 {
		t.Errorf("pages %d", info.PagesBytes)
	}
}

// TestNamesDoNotRetainHeaders: a short name that came from a PAX header
// beside a 1 MiB record must not keep that whole header alive. Before the
// names were copied, 64 such members held 64 MiB for as long as the Info
// lived (the manifest keeps the Info until the archive is vaulted).
func TestNamesDoNotRetainHeaders(t *testing.T) {
	const n, recordSize = 64, 1<<20 - 200
	pr, pw := io.Pipe()
	go func() {
		for i := range n {
			pw.Write(hostiletar.PAX(hostiletar.Record("path", fmt.Sprintf("extra/%02d", i)),
				hostiletar.Record("comment", strings.Repeat("c", recordSize))))
			pw.Write(hostiletar.Raw("x", tar.TypeReg, 0, nil))
		}
		pw.Write(archive(t, samplearchive.Options{MemoryBytes: 4096}))
		pw.Close()
	}()
	before := heapAfterGC()
	info, err := Parse(pr, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	held := heapAfterGC() - before
	runtime.KeepAlive(info)
	t.Logf("heap held by the Info of %d members with %d-byte PAX headers: %.1f MiB", n, recordSize, float64(held)/(1<<20))
	if held > 8<<20 {
		t.Errorf("the parsed Info holds %.1f MiB: names retain their PAX headers", float64(held)/(1<<20))
	}
}

func heapAfterGC() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
