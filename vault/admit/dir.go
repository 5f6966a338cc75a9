package admit

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Dir is the checkpoints directory as the daemon holds it: open by
// descriptor, verified, and re-verified against its path before each use.
//
// Every name the daemon admits, pins, shreds or settles is looked up
// relative to a descriptor (openat, fstatat), so the directory's identity
// is fixed when it is opened. A descriptor is not a path, though: if the
// directory is removed and created again, or renamed away and replaced,
// the old descriptor still works but names a directory the kubelet no
// longer writes to — or one that now lies outside the configured path.
// Acquire therefore compares the path's current inode (lstat, never
// following a symlink) with the held one on every use, reopens the
// directory when it was replaced, and refuses — rather than falling back
// to the old descriptor — while the path is missing, is a symlink, or
// fails the ownership and mode checks. A refused Dir makes Check fail,
// which the daemon's /readyz reports.
//
// Only the last component of the path is protected this way (O_NOFOLLOW);
// its parents are configuration and must be owned by root.
type Dir struct {
	path string
	rule DirRule

	mu  sync.Mutex
	cur *DirRef // nil while refused
	gen uint64  // counts successful (re)opens
}

// DirRule is who may own the checkpoints directory. Group and other must
// never have write permission: whoever can write the directory can swap
// names in it between our checks and our use.
type DirRule struct {
	// Owners are the allowed owner uids (root, the daemon's user and the
	// runtime's user are the usual ones).
	Owners []uint32
}

// ErrDirUnavailable is wrapped by every error Acquire and Check return
// while the directory cannot be used.
var ErrDirUnavailable = errors.New("checkpoints directory unavailable")

// ErrDirRemoved is wrapped (with ErrDirUnavailable) when the path still
// names a directory that was removed: a bind mount of it (a Kubernetes
// hostPath volume) keeps showing the removed directory after the host
// recreated it. No reopening can reach the new one from inside; only a
// restart of the daemon's container, which mounts the path anew, can.
var ErrDirRemoved = errors.New("checkpoints directory removed behind its mount")

// DirError says what is wrong with the directory and how to fix it.
type DirError struct {
	Path    string
	Problem string
	Fix     string
	Err     error
}

func (e *DirError) Error() string {
	s := fmt.Sprintf("checkpoints directory %s %s", e.Path, e.Problem)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

func (e *DirError) Unwrap() []error { return []error{ErrDirUnavailable, e.Err} }

type removedError struct{ *DirError }

func (e removedError) Unwrap() []error { return []error{ErrDirUnavailable, ErrDirRemoved} }

// OpenDir opens and verifies the directory at path. It fails, saying why,
// if the directory cannot be used.
func OpenDir(path string, rule DirRule) (*Dir, error) {
	d := &Dir{path: path, rule: rule}
	r, err := d.Acquire()
	if err != nil {
		return nil, err
	}
	r.Release()
	return d, nil
}

// Path is the configured path of the directory.
func (d *Dir) Path() string { return d.path }

// Acquire returns the directory the path names now, verified, for one
// use; the caller must Release it. If the path names another directory
// than the one held, that one is opened, verified and held from then on;
// the old descriptor stays valid for the users that still hold it, and is
// closed by the last Release. The descriptor is never reused for another
// file while a DirRef is held.
func (d *Dir) Acquire() (*DirRef, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var lst unix.Stat_t
	if err := unix.Fstatat(unix.AT_FDCWD, d.path, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, d.refuse(&DirError{Path: d.path, Problem: "is missing", Fix: "the daemon resumes when it is created again", Err: err})
		}
		return nil, d.refuse(&DirError{Path: d.path, Problem: "cannot be examined", Err: err})
	}
	if err := d.rule.check(d.path, &lst); err != nil {
		return nil, d.refuse(err)
	}
	if lst.Nlink == 0 {
		return nil, d.refuse(removedError{&DirError{Path: d.path, Problem: "was removed, and the path still shows the removed directory (it is a bind mount, e.g. a hostPath volume, of the old one)",
			Fix: "restart the daemon (delete its pod) so that it mounts the new directory"}})
	}
	if d.cur != nil && d.cur.dev == lst.Dev && d.cur.ino == lst.Ino {
		d.cur.refs.Add(1)
		return d.cur, nil
	}
	// New, or replaced: open the path without following a symlink, and
	// make sure what was opened is what was checked.
	fd, err := unix.Open(d.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.refuse(&DirError{Path: d.path, Problem: "cannot be opened as a directory without following a symlink", Err: err})
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, d.refuse(&DirError{Path: d.path, Problem: "cannot be examined", Err: err})
	}
	if st.Dev != lst.Dev || st.Ino != lst.Ino {
		unix.Close(fd)
		return nil, d.refuse(&DirError{Path: d.path, Problem: "was replaced while being opened", Fix: "retried at the next use"})
	}
	if err := d.rule.check(d.path, &st); err != nil {
		unix.Close(fd)
		return nil, d.refuse(err)
	}
	r := &DirRef{fd: fd, dev: st.Dev, ino: st.Ino}
	r.refs.Store(1) // the Dir's own reference
	d.drop()
	d.cur = r
	d.gen++
	r.gen = d.gen
	r.refs.Add(1)
	return r, nil
}

// refuse drops the held directory and returns err.
func (d *Dir) refuse(err error) error {
	d.drop()
	return err
}

func (d *Dir) drop() {
	if d.cur != nil {
		d.cur.Release()
		d.cur = nil
	}
}

// Check verifies that the path still names a usable directory (reopening
// it if it was replaced) and reports why not otherwise.
func (d *Dir) Check() error {
	r, err := d.Acquire()
	if err != nil {
		return err
	}
	r.Release()
	return nil
}

// Close releases the Dir's own reference; descriptors still acquired stay
// open until released.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drop()
	return nil
}

func (rule DirRule) check(path string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
	case unix.S_IFLNK:
		return &DirError{Path: path, Problem: "is a symlink; it is never followed",
			Fix: "replace it with the real directory, or point checkpointsDir at the target"}
	default:
		return &DirError{Path: path, Problem: "is a " + kind(st.Mode) + ", not a directory", Fix: "remove it and create the directory"}
	}
	if st.Mode&0o022 != 0 {
		return &DirError{Path: path, Problem: fmt.Sprintf("is writable by group or others (mode %04o)", st.Mode&0o7777),
			Fix: "chmod go-w " + path}
	}
	for _, uid := range rule.Owners {
		if st.Uid == uid {
			return nil
		}
	}
	return &DirError{Path: path, Problem: fmt.Sprintf("is owned by uid %d, which may not own it (allowed: %v)", st.Uid, rule.Owners),
		Fix: "chown it to root or the daemon's user"}
}

// DirRef is one use of a verified directory descriptor. Fd stays valid
// until Release.
type DirRef struct {
	fd       int
	dev, ino uint64
	gen      uint64
	refs     atomic.Int32
}

// DirFD is an open directory for the *at system calls: a *DirRef in the
// daemon, an *os.File in tools and tests.
type DirFD interface{ Fd() uintptr }

// Fd is the directory's descriptor, for *at system calls.
func (r *DirRef) Fd() uintptr { return uintptr(r.fd) }

// Generation counts the directories opened at the path: it changes when
// the directory was replaced.
func (r *DirRef) Generation() uint64 { return r.gen }

// Identity is the directory's device and inode.
func (r *DirRef) Identity() (dev, ino uint64) { return r.dev, r.ino }

// Names lists the directory through a fresh descriptor of it (so
// concurrent users share no read offset).
func (r *DirRef) Names() ([]string, error) {
	fd, err := unix.Openat(r.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// Release ends this use; the last one closes the descriptor.
func (r *DirRef) Release() {
	if r.refs.Add(-1) == 0 {
		unix.Close(r.fd)
	}
}
