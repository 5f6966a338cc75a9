package admit

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

var root = OwnerRule{UID: uint32(os.Getuid())}

func setup(t *testing.T) (string, *os.File) {
	t.Helper()
	dir := t.TempDir()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return dir, d
}

func writeArchive(t *testing.T, dir string) string {
	t.Helper()
	p, err := samplearchive.WriteDir(dir, samplearchive.Options{MemoryBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(p)
}

func wantReason(t *testing.T, err error, r Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("admitted; want %s", r)
	}
	if got := ReasonOf(err); got != r {
		t.Fatalf("reason %s (%v), want %s", got, err, r)
	}
}

func TestAdmitAndReadOnce(t *testing.T) {
	dir, d := setup(t)
	name := writeArchive(t, dir)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, name), &st); err != nil {
		t.Fatal(err)
	}
	c, err := Open(d, name, root, st.Ino)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.LeaseHeld() {
		t.Fatal("no lease after admission")
	}
	in := checkpoint.NewInspector(checkpoint.Limits{})
	if _, err := io.Copy(in, c.Reader()); err != nil {
		t.Fatal(err)
	}
	if _, err := in.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := c.Recheck(); err != nil {
		t.Fatal(err)
	}
}

// TestWriterInProcess: a file held open for writing is not admitted until
// the writer closes it, written in pieces with pauses as the runtimes do.
func TestWriterInProcess(t *testing.T) {
	dir, d := setup(t)
	var buf bytes.Buffer
	if err := samplearchive.Write(&buf, samplearchive.Options{}); err != nil {
		t.Fatal(err)
	}
	name := samplearchive.Filename(samplearchive.Options{})
	w, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	for i := 0; i < len(data); i += 7000 {
		w.Write(data[i:min(i+7000, len(data))])
		_, err := Open(d, name, root, 0)
		wantReason(t, err, ReasonBeingWritten)
		time.Sleep(time.Millisecond)
	}
	_, err = Open(d, name, root, 0)
	wantReason(t, err, ReasonBeingWritten)
	w.Close()
	c, err := Open(d, name, root, 0)
	if err != nil {
		t.Fatalf("not admitted after the writer closed: %v", err)
	}
	c.Close()
}

// TestWriterChildProcess: another process holding a write descriptor.
func TestWriterChildProcess(t *testing.T) {
	dir, d := setup(t)
	name := writeArchive(t, dir)
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close() // only the child holds it now
	defer cmd.Process.Kill()
	_, err = Open(d, name, root, 0)
	wantReason(t, err, ReasonBeingWritten)
	cmd.Process.Kill()
	cmd.Wait()
	c, err := Open(d, name, root, 0)
	if err != nil {
		t.Fatalf("not admitted after the child exited: %v", err)
	}
	c.Close()
}

// TestWriterDuringRead: a writer opening the file while we read breaks the
// lease; the reader notices, and closing releases the blocked writer.
func TestWriterDuringRead(t *testing.T) {
	dir, d := setup(t)
	p, err := samplearchive.WriteDir(dir, samplearchive.Options{MemoryBytes: 3 * LeaseCheckEvery})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(d, filepath.Base(p), root, 0)
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(p, os.O_WRONLY, 0) // blocks until we let go
		if err == nil {
			f.Close()
		}
		opened <- err
	}()
	// Wait until the kernel marks the lease as breaking.
	for i := 0; c.LeaseHeld(); i++ {
		if i > 500 {
			t.Fatal("the lease never broke")
		}
		time.Sleep(2 * time.Millisecond)
	}
	_, err = io.Copy(io.Discard, c.Reader())
	wantReason(t, err, ReasonChanged)
	wantReason(t, c.Recheck(), ReasonChanged)
	c.Close()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the writer stayed blocked after Close")
	}
}

func TestHostileEntries(t *testing.T) {
	dir, d := setup(t)
	outside := filepath.Join(t.TempDir(), "secret.tar")
	if err := samplearchive.WriteFile(outside, samplearchive.Options{}); err != nil {
		t.Fatal(err)
	}
	// Watch the target for any open or read (IN_OPEN|IN_ACCESS).
	ifd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ifd)
	if _, err := unix.InotifyAddWatch(ifd, outside, unix.IN_OPEN|unix.IN_ACCESS); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(outside, filepath.Join(dir, "link.tar")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo.tar"), 0o600))
	must(os.Mkdir(filepath.Join(dir, "dir.tar"), 0o700))
	hl := writeArchive(t, dir)
	must(os.Link(filepath.Join(dir, hl), filepath.Join(dir, "hardlink.tar")))
	must(samplearchive.WriteFile(filepath.Join(dir, "owned.tar"), samplearchive.Options{}))
	must(os.Chown(filepath.Join(dir, "owned.tar"), 4321, 4321))
	must(samplearchive.WriteFile(filepath.Join(dir, "ino.tar"), samplearchive.Options{}))

	for _, tt := range []struct {
		name string
		ino  uint64
		r    Reason
	}{
		{"link.tar", 0, ReasonSymlink},
		{"fifo.tar", 0, ReasonNotRegular},
		{"dir.tar", 0, ReasonNotRegular},
		{"hardlink.tar", 0, ReasonHardlinked},
		{hl, 0, ReasonHardlinked},
		{"owned.tar", 0, ReasonWrongOwner},
		{"ino.tar", 1, ReasonChanged},
		{"missing.tar", 0, ReasonVanished},
		{"../" + hl, 0, ReasonBadName},
		{"..", 0, ReasonBadName},
		{"", 0, ReasonBadName},
	} {
		done := make(chan error, 1)
		go func() {
			c, err := Open(d, tt.name, root, tt.ino)
			if c != nil {
				c.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			wantReason(t, err, tt.r)
			if ReasonOf(err).Transient() != (tt.r == ReasonChanged || tt.r == ReasonVanished) {
				t.Errorf("%s: Transient() = %v", tt.r, ReasonOf(err).Transient())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Open(%q) hangs", tt.name)
		}
	}
	if c, err := Open(d, "owned.tar", OwnerRule{Any: true}, 0); err != nil {
		t.Errorf("owner any: %v", err)
	} else {
		c.Close()
	}
	buf := make([]byte, 4096)
	if n, _ := unix.Read(ifd, buf); n > 0 {
		t.Errorf("the symlink's target outside the directory was opened or read (%d bytes of inotify events)", n)
	}
}

// TestChangedByName: the name replaced by another file during the read.
func TestChangedByName(t *testing.T) {
	dir, d := setup(t)
	name := writeArchive(t, dir)
	c, err := Open(d, name, root, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := os.Rename(filepath.Join(dir, name), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	wantReason(t, c.Recheck(), ReasonChanged)
}

func TestReasonOfParserErrors(t *testing.T) {
	for err, r := range map[error]Reason{
		checkpoint.ErrTruncated:     ReasonTruncated,
		checkpoint.ErrNotTar:        ReasonNotACheckpoint,
		checkpoint.ErrNotCheckpoint: ReasonNotACheckpoint,
		checkpoint.ErrTrailingData:  ReasonTrailingData,
		errors.New("eio"):           ReasonIO,
	} {
		if got := ReasonOf(err); got != r {
			t.Errorf("ReasonOf(%v) = %s, want %s", err, got, r)
		}
	}
}
