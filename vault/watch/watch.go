// Package watch reports names in the checkpoints directory that may be
// new or changed archives, and pins (<archive>.keep) appearing or going.
//
// Events are hints, never proof: fsnotify says a name was created,
// written, renamed in or had its attributes changed, and vault/admit
// decides whether the file is finished and safe. Because inotify can
// overflow and has no portable close-write event, the directory is also
// scanned in full at start, after an overflow, whenever the watch had to
// be re-established, and every RescanInterval; a scan reports every
// eligible name, and the consumer deduplicates against its own state.
//
// Eligible names end in ".tar" and do not start with '.': dotfiles
// (including the shredder's own .ckvault-shred-* names), pins and
// temporary names (*.tmp, *.part, *~, ...) are ignored. A ".tar" name that
// is a symlink, FIFO or directory IS reported: admission rejects it and
// the rejection is audited.
//
// A missing directory (not yet created, or removed) is polled for until
// it exists; a directory replaced by a new one is watched anew; a symlink
// in its place counts as missing (it is never followed).
package watch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// Kind is what an Event reports.
type Kind int

const (
	// Candidate: Name may be a new or changed archive.
	Candidate Kind = iota
	// Pinned: Name's pin (Name + ".keep") exists.
	Pinned
	// Unpinned: Name's pin was removed.
	Unpinned
)

func (k Kind) String() string {
	switch k {
	case Pinned:
		return "pinned"
	case Unpinned:
		return "unpinned"
	}
	return "candidate"
}

// Event names an archive (a base name in the directory).
type Event struct {
	Name string
	Kind Kind
	// Scan is true for events from a full scan rather than from a file
	// event.
	Scan bool
}

// PinSuffix marks a pinned archive: <archive>.keep.
const PinSuffix = ".keep"

// Eligible reports whether name could be a checkpoint archive.
func Eligible(name string) bool {
	return strings.HasSuffix(name, ".tar") && !strings.HasPrefix(name, ".") && !strings.ContainsAny(name, "/\x00")
}

// pinOf returns the archive a pin name pins, if name is a pin.
func pinOf(name string) (string, bool) {
	archive, ok := strings.CutSuffix(name, PinSuffix)
	return archive, ok && Eligible(archive)
}

// Dir is an open directory (an admit.DirRef in the daemon, an *os.File in
// tools and tests).
type Dir interface{ Fd() uintptr }

// IsPinned reports whether <name>.keep exists in dir (any kind of entry:
// an operator's pin is honoured whatever it is; it is never followed).
func IsPinned(dir Dir, name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(int(dir.Fd()), name+PinSuffix, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// Options configures Run.
type Options struct {
	Dir string
	// RescanInterval is the safety-net full scan period (default 30s).
	RescanInterval time.Duration
	// Debounce is how long a name must be quiet before its event is sent
	// (default 100ms): a file being written produces a stream of Write
	// events, and one Candidate per pause is enough.
	Debounce time.Duration
	// PollInterval is how often a missing directory is looked for
	// (default 1s).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Run watches until ctx is cancelled, sending events to out (blocking:
// a slow consumer slows the watcher, and a kernel queue overflow then
// triggers a rescan). It returns nil when ctx is cancelled, or an error
// if the watch cannot be set up at all.
func Run(ctx context.Context, opts Options, out chan<- Event) error {
	if opts.RescanInterval <= 0 {
		opts.RescanInterval = 30 * time.Second
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	dir := filepath.Clean(opts.Dir)
	w := &watcher{opts: opts, dir: dir, out: out, pending: map[string]pendingEvent{}}
	return w.run(ctx)
}

type pendingEvent struct {
	kind     Kind
	deadline time.Time
}

type watcher struct {
	opts    Options
	dir     string
	out     chan<- Event
	pending map[string]pendingEvent
	dirIno  uint64
}

func (w *watcher) run(ctx context.Context) error {
	for {
		fw, err := w.establish(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		lost, err := w.loop(ctx, fw)
		fw.Close()
		if err != nil || ctx.Err() != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if lost {
			w.opts.Logger.Warn("checkpoints directory went away; waiting for it to reappear", "dir", w.dir)
		}
	}
}

// establish waits for the directory, adds the watch and does a full scan
// (after adding the watch, so nothing created in between is missed).
func (w *watcher) establish(ctx context.Context) (*fsnotify.Watcher, error) {
	warned := false
	for {
		// Lstat: a symlink put in the directory's place is never
		// followed (inotify would watch its target).
		st, err := os.Lstat(w.dir)
		if err == nil && st.IsDir() {
			fw, err := fsnotify.NewWatcher()
			if err != nil {
				return nil, fmt.Errorf("watch %s: %w", w.dir, err)
			}
			if err := fw.Add(w.dir); err == nil {
				w.dirIno = inode(st)
				// The name may have been swapped between the Lstat
				// and the watch: look again before trusting it.
				if again, err := os.Lstat(w.dir); err == nil && again.IsDir() && inode(again) == w.dirIno {
					if err := w.scan(ctx); err == nil {
						return fw, nil
					}
				}
			}
			fw.Close()
		} else if !warned {
			if err == nil {
				err = fmt.Errorf("is a %s, not a directory (symlinks are never followed)", st.Mode().Type())
			}
			w.opts.Logger.Warn("checkpoints directory is missing; polling until it exists", "dir", w.dir, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(w.opts.PollInterval):
		}
	}
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// scan reports every eligible name and every pin.
func (w *watcher) scan(ctx context.Context) error {
	ents, err := os.ReadDir(w.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		n := e.Name()
		if Eligible(n) {
			if !w.send(ctx, Event{Name: n, Kind: Candidate, Scan: true}) {
				return ctx.Err()
			}
		} else if a, ok := pinOf(n); ok {
			if !w.send(ctx, Event{Name: a, Kind: Pinned, Scan: true}) {
				return ctx.Err()
			}
		}
	}
	return nil
}

func (w *watcher) send(ctx context.Context, ev Event) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// loop handles events until the directory is lost (true) or ctx ends.
func (w *watcher) loop(ctx context.Context, fw *fsnotify.Watcher) (lost bool, err error) {
	rescan := time.NewTicker(w.opts.RescanInterval)
	defer rescan.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	armed := false
	arm := func() {
		if !armed {
			debounce.Reset(w.opts.Debounce)
			armed = true
		}
	}
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case ev, ok := <-fw.Events:
			if !ok {
				return true, nil
			}
			if filepath.Clean(ev.Name) == w.dir {
				if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
					return true, nil
				}
				continue
			}
			name := filepath.Base(ev.Name)
			switch {
			case Eligible(name):
				if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write) || ev.Has(fsnotify.Chmod) {
					w.pending[name] = pendingEvent{kind: Candidate, deadline: time.Now().Add(w.opts.Debounce)}
					arm()
				}
			default:
				if a, ok := pinOf(name); ok {
					kind := Pinned
					if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
						kind = Unpinned
					}
					// Pins are not debounced: they are rare and the
					// latest state is what counts.
					if !w.send(ctx, Event{Name: a, Kind: kind}) {
						return false, nil
					}
				}
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return true, nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				w.opts.Logger.Warn("file event queue overflowed; rescanning", "dir", w.dir)
			} else {
				w.opts.Logger.Warn("file watch error; rescanning", "dir", w.dir, "err", err)
			}
			if lost, err := w.rescan(ctx); lost || err != nil {
				return lost, err
			}
		case <-rescan.C:
			if lost, err := w.rescan(ctx); lost || err != nil {
				return lost, err
			}
		case <-debounce.C:
			armed = false
			now := time.Now()
			var next time.Time
			for name, p := range w.pending {
				if !p.deadline.After(now) {
					delete(w.pending, name)
					if !w.send(ctx, Event{Name: name, Kind: p.kind}) {
						return false, nil
					}
				} else if next.IsZero() || p.deadline.Before(next) {
					next = p.deadline
				}
			}
			if !next.IsZero() {
				debounce.Reset(time.Until(next))
				armed = true
			}
		}
	}
}

// rescan does a full scan, reporting the directory lost if it is gone or
// has been replaced by another directory (whose changes the old watch
// would never see).
func (w *watcher) rescan(ctx context.Context) (lost bool, err error) {
	st, err := os.Lstat(w.dir)
	if err != nil || !st.IsDir() || inode(st) != w.dirIno {
		return true, nil
	}
	if err := w.scan(ctx); err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return true, nil
	}
	return false, nil
}
