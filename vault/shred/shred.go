// Package shred destroys a vaulted archive in the checkpoints directory:
// overwrite in place with random data, fsync, truncate, fsync, rename to a
// random name, unlink, fsync the directory.
//
// It refuses to touch a file that is not exactly the one that was sealed
// (same device, inode, size and mtime, one link, not a symlink), so a new
// archive that reused the name, or a hard link someone added, is never
// destroyed.
//
// Overwriting in place reaches the old data blocks only where the
// filesystem writes in place: ext4 and xfs on a spinning disk. On SSDs the
// flash translation layer may keep old pages until they are erased, and on
// copy-on-write or log-structured filesystems (btrfs, zfs, f2fs, overlayfs
// over any of them, network and FUSE filesystems) a write goes to new
// blocks: the overwrite is then best effort, and Result says so with the
// filesystem's name, so the audit record and the log can be honest. tmpfs
// overwrites in RAM (fine, though pages may have been swapped out).
package shred

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-vault/ckvault/vault/admit"
)

// ErrChanged is returned (wrapped) when the file is not the one sealed.
var ErrChanged = errors.New("file changed since it was sealed")

// Result describes what was done.
type Result struct {
	Passes int
	// Bytes overwritten per pass.
	Bytes int64
	// FSType names the filesystem ("ext4/ext3", "btrfs", ...).
	FSType string
	// BestEffort is true where overwriting may not reach the old data.
	BestEffort bool
	// Reason explains BestEffort.
	Reason string
}

// Filesystem magics (statfs f_type, linux/magic.h).
var fsTypes = map[int64]struct {
	name       string
	bestEffort bool
}{
	0xEF53:     {"ext4/ext3", false},
	0x58465342: {"xfs", false},
	0x01021994: {"tmpfs", false},
	0x9123683E: {"btrfs", true},
	0x2FC12FC1: {"zfs", true},
	0x794C7630: {"overlayfs", true},
	0xF2F52010: {"f2fs", true},
	0xCA451A4E: {"bcachefs", true},
	0x6969:     {"nfs", true},
	0xFF534D42: {"cifs", true},
	0x65735546: {"fuse", true},
	0x5346414F: {"afs", true},
	0x01021997: {"9p", true},
}

// Filesystem reports the type of the filesystem holding fd and whether
// overwriting there is only best effort.
func Filesystem(fd int) (name string, bestEffort bool, reason string, err error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return "", true, "", err
	}
	t, ok := fsTypes[int64(sfs.Type)]
	if !ok {
		return fmt.Sprintf("0x%x", uint64(sfs.Type)), true, "unknown filesystem: overwriting in place is not known to reach the old blocks", nil
	}
	if t.bestEffort {
		return t.name, true, t.name + " does not overwrite in place (copy-on-write, log-structured or remote): old data may survive", nil
	}
	return t.name, false, "", nil
}

// afterOverwrite is a test hook, called after the last pass is synced.
var afterOverwrite func()

// Shred destroys name in dir if it is still exactly expect. passes is the
// number of random overwrites (0: truncate and unlink only). The caller
// must have closed its own descriptors of the file: a read lease (see
// vault/admit) would make the write open fail.
func Shred(dir *os.File, name string, expect admit.Snapshot, passes int) (Result, error) {
	if err := admit.CheckName(name); err != nil {
		return Result{}, err
	}
	if passes < 0 {
		return Result{}, fmt.Errorf("shred %q: negative pass count %d", name, passes)
	}
	dirfd := int(dir.Fd())
	if err := check(dirfd, name, expect); err != nil {
		return Result{}, err
	}
	// O_NONBLOCK: if anyone holds a lease, fail at once (EWOULDBLOCK)
	// instead of waiting for the lease-break time.
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return Result{}, fmt.Errorf("shred %q: open for overwriting: %w", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Result{}, fmt.Errorf("shred %q: fstat: %w", name, err)
	}
	if err := same(name, &st, expect); err != nil {
		return Result{}, err
	}
	res := Result{Passes: passes, Bytes: st.Size}
	res.FSType, res.BestEffort, res.Reason, err = Filesystem(fd)
	if err != nil {
		return Result{}, fmt.Errorf("shred %q: statfs: %w", name, err)
	}

	for i := 0; i < passes; i++ {
		if err := overwrite(fd, st.Size); err != nil {
			return res, fmt.Errorf("shred %q: overwrite pass %d: %w", name, i+1, err)
		}
		if err := unix.Fsync(fd); err != nil {
			return res, fmt.Errorf("shred %q: fsync after pass %d: %w", name, i+1, err)
		}
	}
	if afterOverwrite != nil {
		afterOverwrite()
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		return res, fmt.Errorf("shred %q: truncate: %w", name, err)
	}
	if err := unix.Fsync(fd); err != nil {
		return res, fmt.Errorf("shred %q: fsync after truncate: %w", name, err)
	}

	// Rename to a random dot-name first, so the archive's name (which
	// says whose checkpoint it was) is gone from the directory even if
	// the unlink is interrupted; the watcher ignores dot-names.
	var rb [12]byte
	rand.Read(rb[:])
	tmp := ".ckvault-shred-" + hex.EncodeToString(rb[:])
	if err := unix.Renameat2(dirfd, name, dirfd, tmp, unix.RENAME_NOREPLACE); err != nil {
		return res, fmt.Errorf("shred %q: rename: %w", name, err)
	}
	// Make sure what we are about to unlink is still our inode.
	var lst unix.Stat_t
	if err := unix.Fstatat(dirfd, tmp, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil || lst.Ino != st.Ino || lst.Dev != st.Dev {
		return res, fmt.Errorf("shred %q: %w: the name was replaced during shredding; left as %s", name, ErrChanged, tmp)
	}
	if err := unix.Unlinkat(dirfd, tmp, 0); err != nil {
		return res, fmt.Errorf("shred %q: unlink %s: %w", name, tmp, err)
	}
	if err := unix.Fsync(dirfd); err != nil {
		return res, fmt.Errorf("shred %q: fsync directory: %w", name, err)
	}
	return res, nil
}

func check(dirfd int, name string, expect admit.Snapshot) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("shred %q: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("shred %q: %w: no longer a regular file", name, ErrChanged)
	}
	return same(name, &st, expect)
}

func same(name string, st *unix.Stat_t, expect admit.Snapshot) error {
	if st.Nlink != 1 {
		return fmt.Errorf("shred %q: %w: it has %d links; refusing to destroy data reachable by another name", name, ErrChanged, st.Nlink)
	}
	got := admit.Snapshot{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Mtime: time.Unix(st.Mtim.Unix())}
	if !got.Same(expect) {
		return fmt.Errorf("shred %q: %w: inode, size or mtime differ from the sealed archive (a new checkpoint under the same name?)", name, ErrChanged)
	}
	return nil
}

// overwrite writes size bytes of ChaCha8 output (seeded from crypto/rand,
// so it is unpredictable and not compressible or deduplicable) over the
// file from offset 0.
func overwrite(fd int, size int64) error {
	var seed [32]byte
	rand.Read(seed[:])
	rng := mrand.NewChaCha8(seed)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		rng.Read(buf[:n])
		w, err := unix.Pwrite(fd, buf[:n], off)
		if err != nil {
			return err
		}
		if w == 0 {
			return errors.New("short write")
		}
		off += int64(w)
	}
	return nil
}
