package daemon

import (
	"context"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-vault/ckvault/audit"
)

// shredDebrisPrefix is the dot-name vault/shred renames an overwritten,
// truncated archive to just before unlinking it.
const shredDebrisPrefix = ".ckvault-shred-"

// settleShreds finishes, at start-up, the shreds a crash interrupted after
// the archive's name had already left the directory (renamed to shred
// debris, or unlinked, before the "shredded" result was recorded). Such a
// version has no file for the watcher to find, so without this pass it
// would stay in the shredding stage forever, with an intent in the audit
// trail and no result. Versions whose file is still there (same inode) are
// left to the normal path, which re-checks and resumes them.
//
// The daemon was proven to hold the remote copy before any of these began
// (a version reaches shredding only from proven), so closing them out
// destroys nothing and loses nothing.
func (d *Daemon) settleShreds(ctx context.Context) error {
	debris, err := d.removeShredDebris()
	if err != nil {
		d.log.Warn("could not remove shred debris", "dir", d.cfg.CheckpointsDir, "err", err)
	}
	all, err := d.state.All()
	if err != nil {
		return fmt.Errorf("reading the state database: %w", err)
	}
	dirfd := int(d.dir.Fd())
	for i := range all {
		p := &all[i]
		if p.Stage != StageShredding {
			continue
		}
		var st unix.Stat_t
		err := unix.Fstatat(dirfd, p.Name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && st.Dev == p.Dev && st.Ino == p.Ino {
			continue // still here: process() resumes it
		}
		how := "the archive's name was gone at restart: the interrupted shred had overwritten, truncated and unlinked it"
		if debris == 0 {
			// Without debris we cannot tell our unlink from someone
			// else's removal; say so rather than claim an overwrite.
			how = "the archive's name was gone at restart (unlinked by the interrupted shred, or removed by someone else)"
		}
		if err := d.record(ctx, audit.Record{Action: "shredded", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
			Container: p.Container, Outcome: audit.OK,
			Detail: map[string]string{"object": p.Object, "phase": "done", "recovered": how}}); err != nil {
			return err
		}
		p.Stage, p.Reason = StageShredded, "completed after restart: "+how
		if err := d.state.Put(p); err != nil {
			return err
		}
		d.log.Info("completed a shred interrupted by a restart", "file", p.Name, "object", p.Object)
	}
	return nil
}

// removeShredDebris unlinks what an interrupted shred left behind: empty
// regular files with one link named with vault/shred's debris prefix.
// Anything else with that name is not ours to delete and stays.
func (d *Daemon) removeShredDebris() (int, error) {
	names, err := d.dir.Readdirnames(-1)
	if _, serr := d.dir.Seek(0, 0); err == nil {
		err = serr
	}
	if err != nil {
		return 0, err
	}
	dirfd := int(d.dir.Fd())
	n := 0
	for _, name := range names {
		if !strings.HasPrefix(name, shredDebrisPrefix) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 || st.Nlink != 1 {
			continue
		}
		if err := unix.Unlinkat(dirfd, name, 0); err != nil {
			return n, fmt.Errorf("removing shred debris %s: %w", name, err)
		}
		n++
	}
	if n > 0 {
		return n, unix.Fsync(dirfd)
	}
	return 0, nil
}
