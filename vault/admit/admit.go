// Package admit decides whether a file in the checkpoints directory is
// finished and safe to read, and keeps it so while it is read.
//
// Runtimes write the final path in place, so a file that has appeared may
// still be growing. Open admits a name only when:
//
//   - it is a plain name in the directory (no '/', never "." or ".."),
//     looked up relative to the directory's file descriptor, without
//     following a symlink (fstatat AT_SYMLINK_NOFOLLOW, then openat
//     O_NOFOLLOW|O_NONBLOCK: a FIFO cannot block us, and a device is never
//     opened because its lstat already rejects it);
//   - it is a regular file with one link, owned as the policy requires,
//     whose inode is the one the directory listing showed;
//   - the kernel grants a read lease (F_SETLEASE F_RDLCK), which it refuses
//     with EAGAIN while any process holds the file open for writing.
//
// While the lease is held, a process that opens the file for writing or
// truncates it breaks the lease: the kernel signals us (SIGIO, which the Go
// runtime ignores unless asked) and blocks the opener for up to
// /proc/sys/fs/lease-break-time seconds or until we let go. We notice
// without signals: Candidate.Reader polls F_GETLEASE every few MiB and
// fails with ReasonChanged as soon as the lease is breaking, and Recheck
// checks it once more after the read, together with the size, mtime, ctime,
// inode and link count (fstat) and that the name still points at the same
// inode (fstatat). Closing the Candidate releases the lease, unblocking the
// writer.
//
// Leases need the caller to own the file or hold CAP_LEASE (root has it)
// and a filesystem that supports them (local ones do; some network and
// FUSE filesystems do not): Open then fails with ReasonLeaseUnsupported
// rather than admitting a file whose writers it cannot rule out.
package admit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
)

// Reason says why a file was not admitted (or was rejected later). The
// values are stable: they appear in audit records and metric labels.
type Reason string

const (
	ReasonBadName          Reason = "bad-name"
	ReasonVanished         Reason = "vanished"
	ReasonSymlink          Reason = "symlink"
	ReasonNotRegular       Reason = "not-regular"
	ReasonHardlinked       Reason = "hardlinked"
	ReasonWrongOwner       Reason = "wrong-owner"
	ReasonBeingWritten     Reason = "being-written"
	ReasonChanged          Reason = "changed"
	ReasonLeaseUnsupported Reason = "lease-unsupported"
	ReasonNotACheckpoint   Reason = "not-a-checkpoint"
	ReasonTruncated        Reason = "truncated"
	ReasonTrailingData     Reason = "trailing-data"
	ReasonIO               Reason = "io-error"
)

// Transient reports whether the condition is expected to clear by itself
// (the writer is still writing, the file went away or changed): the daemon
// retries later and does not audit it as a rejection.
func (r Reason) Transient() bool {
	return r == ReasonBeingWritten || r == ReasonVanished || r == ReasonChanged
}

// Error is a refusal, with the reason and the file's name (never its
// content).
type Error struct {
	Name   string
	Reason Reason
	Detail string
	Err    error // underlying error, if any
}

func (e *Error) Error() string {
	s := fmt.Sprintf("checkpoint file %q not admitted (%s)", e.Name, e.Reason)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf classifies any error from this package or from
// vault/checkpoint's parser; other errors are ReasonIO.
func ReasonOf(err error) Reason {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Reason
	case errors.Is(err, checkpoint.ErrTruncated):
		return ReasonTruncated
	case errors.Is(err, checkpoint.ErrTrailingData):
		return ReasonTrailingData
	case errors.Is(err, checkpoint.ErrNotTar), errors.Is(err, checkpoint.ErrNotCheckpoint), errors.Is(err, checkpoint.ErrTooLarge):
		return ReasonNotACheckpoint
	default:
		return ReasonIO
	}
}

// OwnerRule is who must own an admitted file.
type OwnerRule struct {
	Any bool   // any owner
	UID uint32 // the required owner when !Any
}

// Snapshot identifies a file's state: the same inode with the same size,
// mtime and ctime has not been written to.
type Snapshot struct {
	Dev   uint64
	Ino   uint64
	Size  int64
	Mtime time.Time
	Ctime time.Time
	UID   uint32
	Nlink uint64
}

func snapshotOf(st *unix.Stat_t) Snapshot {
	return Snapshot{
		Dev:   st.Dev,
		Ino:   st.Ino,
		Size:  st.Size,
		Mtime: time.Unix(st.Mtim.Unix()),
		Ctime: time.Unix(st.Ctim.Unix()),
		UID:   st.Uid,
		Nlink: uint64(st.Nlink),
	}
}

// Same reports whether two snapshots describe the same unchanged file
// (ignoring ctime, which link-count changes also move; callers that care
// about links compare Nlink).
func (s Snapshot) Same(o Snapshot) bool {
	return s.Dev == o.Dev && s.Ino == o.Ino && s.Size == o.Size && s.Mtime.Equal(o.Mtime)
}

// Candidate is an admitted file, open for reading under a read lease.
type Candidate struct {
	File *os.File
	Name string
	// Snapshot is the state at admission.
	Snapshot Snapshot
	dirfd    int
}

// CheckName rejects names that are not a plain entry of the directory.
func CheckName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return &Error{Name: name, Reason: ReasonBadName, Detail: "not a plain file name in the checkpoints directory"}
	}
	return nil
}

// Open admits name in the directory dir (an open directory). wantIno,
// when non-zero, is the inode the directory listing showed; a different
// inode means the name was replaced in between.
func Open(dir DirFD, name string, rule OwnerRule, wantIno uint64) (*Candidate, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	dirfd := int(dir.Fd())
	var lst unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, &Error{Name: name, Reason: ReasonVanished, Err: err}
		}
		return nil, &Error{Name: name, Reason: ReasonIO, Detail: "stat", Err: err}
	}
	if err := checkStat(name, &lst, rule, wantIno); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ELOOP):
			return nil, &Error{Name: name, Reason: ReasonSymlink, Detail: "replaced by a symlink", Err: err}
		case errors.Is(err, unix.ENOENT):
			return nil, &Error{Name: name, Reason: ReasonVanished, Err: err}
		}
		return nil, &Error{Name: name, Reason: ReasonIO, Detail: "open", Err: err}
	}
	fail := func(e error) (*Candidate, error) {
		unix.Close(fd)
		return nil, e
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(&Error{Name: name, Reason: ReasonIO, Detail: "fstat", Err: err})
	}
	// The name may have been swapped between the lstat and the open.
	if st.Ino != lst.Ino || st.Dev != lst.Dev {
		return fail(&Error{Name: name, Reason: ReasonChanged, Detail: "replaced while being opened"})
	}
	if err := checkStat(name, &st, rule, wantIno); err != nil {
		return fail(err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_RDLCK); err != nil {
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
			return fail(&Error{Name: name, Reason: ReasonBeingWritten, Detail: "a process still has it open for writing"})
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOLCK), errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return fail(&Error{Name: name, Reason: ReasonLeaseUnsupported,
				Detail: "cannot take a read lease to prove no writer remains (needs root or CAP_LEASE, fs.leases-enable=1 and a local filesystem)", Err: err})
		}
		return fail(&Error{Name: name, Reason: ReasonIO, Detail: "F_SETLEASE", Err: err})
	}
	// A writer may have closed just before the lease: make sure nothing
	// was written between the fstat and the lease.
	var st2 unix.Stat_t
	if err := unix.Fstat(fd, &st2); err != nil {
		return fail(&Error{Name: name, Reason: ReasonIO, Detail: "fstat", Err: err})
	}
	if !snapshotOf(&st).Same(snapshotOf(&st2)) {
		return fail(&Error{Name: name, Reason: ReasonChanged, Detail: "written to while being admitted"})
	}
	return &Candidate{
		File:     os.NewFile(uintptr(fd), name),
		Name:     name,
		Snapshot: snapshotOf(&st2),
		dirfd:    dirfd,
	}, nil
}

func checkStat(name string, st *unix.Stat_t, rule OwnerRule, wantIno uint64) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFLNK:
		return &Error{Name: name, Reason: ReasonSymlink, Detail: "is a symlink; symlinks are never followed"}
	default:
		return &Error{Name: name, Reason: ReasonNotRegular, Detail: "is a " + kind(st.Mode) + ", not a regular file"}
	}
	if st.Nlink != 1 {
		return &Error{Name: name, Reason: ReasonHardlinked, Detail: fmt.Sprintf("has %d links; a hard-linked archive could be read or kept through another name", st.Nlink)}
	}
	if !rule.Any && st.Uid != rule.UID {
		return &Error{Name: name, Reason: ReasonWrongOwner, Detail: fmt.Sprintf("owned by uid %d, policy requires uid %d (daemon.owner)", st.Uid, rule.UID)}
	}
	if wantIno != 0 && st.Ino != wantIno {
		return &Error{Name: name, Reason: ReasonChanged, Detail: "replaced since the directory was listed"}
	}
	return nil
}

func kind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "special file"
}

// LeaseHeld reports whether the read lease is still intact, i.e. no
// process has since tried to open the file for writing or truncate it.
func (c *Candidate) LeaseHeld() bool {
	t, err := unix.FcntlInt(c.File.Fd(), unix.F_GETLEASE, 0)
	return err == nil && t == unix.F_RDLCK
}

// Recheck verifies, after the file was read, that it is still exactly
// what was admitted: lease intact, same inode, size, mtime and one link,
// and the name in the directory still points at it.
func (c *Candidate) Recheck() error {
	if !c.LeaseHeld() {
		return &Error{Name: c.Name, Reason: ReasonChanged, Detail: "a process opened it for writing while it was read"}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(c.File.Fd()), &st); err != nil {
		return &Error{Name: c.Name, Reason: ReasonIO, Detail: "fstat", Err: err}
	}
	now := snapshotOf(&st)
	if !now.Same(c.Snapshot) {
		return &Error{Name: c.Name, Reason: ReasonChanged, Detail: "size or modification time changed while it was read"}
	}
	if now.Nlink != 1 {
		return &Error{Name: c.Name, Reason: ReasonHardlinked, Detail: "gained a link while it was read"}
	}
	var lst unix.Stat_t
	if err := unix.Fstatat(c.dirfd, c.Name, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &Error{Name: c.Name, Reason: ReasonChanged, Detail: "renamed or removed while it was read", Err: err}
	}
	if lst.Ino != st.Ino || lst.Dev != st.Dev {
		return &Error{Name: c.Name, Reason: ReasonChanged, Detail: "the name now points at another file"}
	}
	return nil
}

// Close releases the lease and closes the file.
func (c *Candidate) Close() error {
	// Closing the descriptor releases the lease; unlock first anyway so
	// a blocked writer is released even if a dup of the fd lingers.
	unix.FcntlInt(c.File.Fd(), unix.F_SETLEASE, unix.F_UNLCK)
	return c.File.Close()
}

// LeaseCheckEvery is how many bytes Reader reads between lease checks: it
// bounds how long a writer that breaks our lease waits for us.
const LeaseCheckEvery = 8 << 20

// Reader reads the file from the start, failing with ReasonChanged as
// soon as the lease breaks, and at EOF unless exactly Snapshot.Size bytes
// were read (a shrinking file). It does not call Recheck.
func (c *Candidate) Reader() io.Reader {
	return &leaseReader{c: c, r: io.NewSectionReader(c.File, 0, 1<<62)}
}

type leaseReader struct {
	c         *Candidate
	r         io.Reader
	n         int64
	sinceLast int64
}

func (l *leaseReader) Read(p []byte) (int, error) {
	if l.sinceLast >= LeaseCheckEvery {
		l.sinceLast = 0
		if !l.c.LeaseHeld() {
			return 0, &Error{Name: l.c.Name, Reason: ReasonChanged, Detail: "a process opened it for writing while it was read"}
		}
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	l.sinceLast += int64(n)
	if l.n > l.c.Snapshot.Size {
		return n, &Error{Name: l.c.Name, Reason: ReasonChanged, Detail: "grew while it was read"}
	}
	if err == io.EOF && l.n != l.c.Snapshot.Size {
		return n, &Error{Name: l.c.Name, Reason: ReasonChanged, Detail: fmt.Sprintf("shrank while it was read (%d of %d bytes)", l.n, l.c.Snapshot.Size)}
	}
	return n, err
}

// Stat returns the snapshot of name in dir, without following a symlink.
func Stat(dir DirFD, name string) (Snapshot, error) {
	if err := CheckName(name); err != nil {
		return Snapshot{}, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return Snapshot{}, err
	}
	return snapshotOf(&st), nil
}
