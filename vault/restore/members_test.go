package restore_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"path"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/restore"
)

func tarOf(t testing.TB, hdrs ...*tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Name))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(h.Name))
		}
	}
	tw.Close()
	return b.Bytes()
}

func TestCheckMembers(t *testing.T) {
	reg := func(n string) *tar.Header { return &tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o600} }
	dir := func(n string) *tar.Header { return &tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o700} }
	for _, tc := range []struct {
		name string
		hdrs []*tar.Header
		ok   bool
	}{
		{"plain", []*tar.Header{dir("checkpoint/"), reg("checkpoint/pages-1.img"), reg("config.dump")}, true},
		{"dot-slash", []*tar.Header{dir("./"), dir("./checkpoint/"), reg("./spec.dump")}, true},
		{"inner dot-dot that stays inside", []*tar.Header{reg("checkpoint/../spec.dump")}, true},
		{"absolute", []*tar.Header{reg("/etc/passwd")}, false},
		{"climbs out", []*tar.Header{reg("../../etc/cron.d/x")}, false},
		{"climbs out after a prefix", []*tar.Header{reg("checkpoint/../../x")}, false},
		{"backslash", []*tar.Header{reg(`..\x`)}, false},
		{"symlink", []*tar.Header{{Name: "x", Typeflag: tar.TypeSymlink, Linkname: "/etc"}}, false},
		{"hard link", []*tar.Header{reg("a"), {Name: "b", Typeflag: tar.TypeLink, Linkname: "a"}}, false},
		{"device", []*tar.Header{{Name: "sda", Typeflag: tar.TypeBlock, Devmajor: 8}}, false},
		{"fifo", []*tar.Header{{Name: "p", Typeflag: tar.TypeFifo}}, false},
	} {
		err := restore.CheckMembers(bytes.NewReader(tarOf(t, tc.hdrs...)))
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, restore.ErrUnsafeMember) {
			t.Errorf("%s: %v, want ErrUnsafeMember", tc.name, err)
		}
	}
	// Real checkpoint layouts of both engines pass.
	for _, e := range []samplearchive.Engine{samplearchive.CRIO, samplearchive.Containerd} {
		var b bytes.Buffer
		if err := samplearchive.Write(&b, samplearchive.Options{Engine: e, DotSlash: e == samplearchive.Containerd}); err != nil {
			t.Fatal(err)
		}
		if err := restore.CheckMembers(&b); err != nil {
			t.Errorf("%v archive: %v", e, err)
		}
	}
	// Not a tar at all.
	if err := restore.CheckMembers(strings.NewReader(strings.Repeat("x", 1024))); err == nil {
		t.Error("CheckMembers accepted garbage")
	}
}

// FuzzCheckMembers: CheckMembers never panics, and whatever it accepts
// unpacks only regular files and directories below the target directory.
func FuzzCheckMembers(f *testing.F) {
	var b bytes.Buffer
	if err := samplearchive.Write(&b, samplearchive.Options{MemoryBytes: 1024}); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add(tarOf(f, &tar.Header{Name: "../x", Typeflag: tar.TypeReg}))
	f.Add(tarOf(f, &tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if restore.CheckMembers(bytes.NewReader(data)) != nil {
			return
		}
		tr := tar.NewReader(bytes.NewReader(data))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("accepted, but a second read fails: %v", err)
			}
			if h.Typeflag == tar.TypeXGlobalHeader {
				continue
			}
			if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir {
				t.Fatalf("accepted member %q of type %q", h.Name, h.Typeflag)
			}
			c := path.Clean("/target/" + h.Name)
			if h.Name == "" || strings.HasPrefix(h.Name, "/") || !(c == "/target" || strings.HasPrefix(c, "/target/")) {
				t.Fatalf("accepted member %q that unpacks to %s", h.Name, c)
			}
		}
	})
}
