package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type harness struct {
	t      *testing.T
	dir    string
	events chan Event
	done   chan error
	cancel context.CancelFunc
}

func start(t *testing.T, dir string, opts Options) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts.Dir = dir
	if opts.Debounce == 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 20 * time.Millisecond
	}
	h := &harness{t: t, dir: dir, events: make(chan Event, 100), done: make(chan error, 1), cancel: cancel}
	go func() { h.done <- Run(ctx, opts, h.events) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop on cancel")
		}
	})
	return h
}

// sync returns once the watch is live: a file created now is seen by a
// file event, not by the start-up scan.
func (h *harness) sync() {
	h.t.Helper()
	for i := 0; i < 100; i++ {
		name := fmt.Sprintf("sync-%d.tar", i)
		p := filepath.Join(h.dir, name)
		write(h.t, p)
		timeout := time.After(time.Second)
	wait:
		for {
			select {
			case ev := <-h.events:
				if ev.Name == name && !ev.Scan {
					os.Remove(p)
					return
				}
			case <-timeout:
				break wait
			}
		}
		os.Remove(p)
	}
	h.t.Fatal("the watch never became live")
}

// expect waits for an event matching name and kind, failing after 5s.
func (h *harness) expect(name string, kind Kind) Event {
	h.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-h.events:
			if ev.Name == name && ev.Kind == kind {
				return ev
			}
		case <-deadline:
			h.t.Fatalf("no %s event for %s", kind, name)
		}
	}
}

// quiet asserts that no event for name arrives within d.
func (h *harness) quiet(d time.Duration, names ...string) {
	h.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev := <-h.events:
			for _, n := range names {
				if ev.Name == n {
					h.t.Fatalf("unexpected event %+v at %v", ev, time.Now())
				}
			}
		case <-timeout:
			return
		}
	}
}

func write(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEligible(t *testing.T) {
	for name, want := range map[string]bool{
		"checkpoint-a_b-c-2026-03-13T21:43:06Z.tar": true,
		"x.tar":                 true,
		".x.tar":                false,
		"x.tar.keep":            false,
		"x.tar.tmp":             false,
		"x.tar.part":            false,
		"x.tar~":                false,
		"x.tgz":                 false,
		"":                      false,
		".ckvault-shred-00.tar": false,
	} {
		if Eligible(name) != want {
			t.Errorf("Eligible(%q) != %v", name, want)
		}
	}
}

func TestScanAndEvents(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "old.tar"))
	write(t, filepath.Join(dir, "old.tar.keep"))
	write(t, filepath.Join(dir, ".hidden.tar"))
	h := start(t, dir, Options{})
	if ev := h.expect("old.tar", Candidate); !ev.Scan {
		t.Error("start-up scan event not marked Scan")
	}
	h.expect("old.tar", Pinned)
	h.sync()

	write(t, filepath.Join(dir, "new.tar"))
	if ev := h.expect("new.tar", Candidate); ev.Scan {
		t.Error("file event marked Scan")
	}
	// Temp name renamed in: the final name is reported, the temp is not.
	write(t, filepath.Join(dir, "late.tar.tmp"))
	if err := os.Rename(filepath.Join(dir, "late.tar.tmp"), filepath.Join(dir, "late.tar")); err != nil {
		t.Fatal(err)
	}
	h.expect("late.tar", Candidate)
	// Renamed in from another directory.
	other := filepath.Join(t.TempDir(), "x")
	write(t, other)
	if err := os.Rename(other, filepath.Join(dir, "moved.tar")); err != nil {
		t.Fatal(err)
	}
	h.expect("moved.tar", Candidate)
	// A symlink and a FIFO named .tar are passed through for admission
	// to reject.
	os.Symlink("/etc/passwd", filepath.Join(dir, "link.tar"))
	h.expect("link.tar", Candidate)
	unix.Mkfifo(filepath.Join(dir, "fifo.tar"), 0o600)
	h.expect("fifo.tar", Candidate)
	// Pins.
	write(t, filepath.Join(dir, "new.tar.keep"))
	h.expect("new.tar", Pinned)
	os.Remove(filepath.Join(dir, "new.tar.keep"))
	h.expect("new.tar", Unpinned)
	// Ignored names.
	write(t, filepath.Join(dir, ".x.tar"))
	write(t, filepath.Join(dir, "y.tar.part"))
	h.quiet(150*time.Millisecond, ".x.tar", "y.tar.part", "y.tar")

	d, _ := os.Open(dir)
	defer d.Close()
	if !IsPinned(d, "old.tar") || IsPinned(d, "new.tar") {
		t.Error("IsPinned")
	}
}

// TestDebounce: a stream of writes yields one event per quiet period.
func TestDebounce(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, Options{Debounce: 200 * time.Millisecond})
	h.sync()
	f, err := os.Create(filepath.Join(dir, "big.tar"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		f.Write([]byte("data"))
		time.Sleep(5 * time.Millisecond)
	}
	f.Close()
	h.expect("big.tar", Candidate)
	h.quiet(300*time.Millisecond, "big.tar")
}

func TestMissingAndRecreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	h := start(t, dir, Options{RescanInterval: 50 * time.Millisecond})
	time.Sleep(50 * time.Millisecond)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "a.tar"))
	h.expect("a.tar", Candidate)

	// Removed and recreated: the new directory is watched.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	write(t, filepath.Join(dir, "b.tar"))
	h.expect("b.tar", Candidate)

	// Replaced by rename: the old watch sees nothing in the new one; the
	// periodic check of the directory's inode re-establishes it.
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "c.tar"))
	h.expect("c.tar", Candidate)
}

func TestPeriodicRescan(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, Options{RescanInterval: 50 * time.Millisecond})
	h.sync()
	write(t, filepath.Join(dir, "a.tar"))
	h.expect("a.tar", Candidate)
	// Under load the file's Create and Write events may be debounced
	// separately (events are hints; duplicates are allowed): wait for the
	// rescan's event rather than take the next one.
	for i := 0; ; i++ {
		if ev := h.expect("a.tar", Candidate); ev.Scan {
			break
		}
		if i == 3 {
			t.Fatal("no event from a rescan")
		}
	}
}

// TestSymlinkInPlace: a symlink put in the directory's place is not
// followed: nothing behind it is reported, and a real directory that
// replaces it again is watched.
func TestSymlinkInPlace(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "checkpoints")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	h := start(t, dir, Options{RescanInterval: 50 * time.Millisecond})
	h.sync()
	elsewhere := filepath.Join(base, "elsewhere")
	if err := os.Mkdir(elsewhere, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(elsewhere, "lure.tar"))
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, dir); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(elsewhere, "lure2.tar"))
	h.quiet(500*time.Millisecond, "lure.tar", "lure2.tar")

	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "real.tar"))
	h.expect("real.tar", Candidate)
}
