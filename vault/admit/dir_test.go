package admit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

var me = DirRule{Owners: []uint32{uint32(os.Geteuid())}}

func dirIno(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestDirFollowsReplacement: a removed and recreated directory is
// reopened; while missing it is refused; an old reference keeps its own
// (still valid) descriptor until released.
func TestDirFollowsReplacement(t *testing.T) {
	p := filepath.Join(t.TempDir(), "checkpoints")
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(p, me)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	old, err := d.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	_, removed := old.Identity()
	if removed != dirIno(t, p) {
		t.Fatal("wrong directory held")
	}

	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); !errors.Is(err, ErrDirUnavailable) {
		t.Fatalf("Check with the directory gone: %v", err)
	}
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "new.tar"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	cur, err := d.Acquire()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Release()
	if _, ino := cur.Identity(); ino != dirIno(t, p) || cur.Generation() == old.Generation() {
		t.Fatalf("not reopened: generation %d -> %d", old.Generation(), cur.Generation())
	}
	if _, err := Stat(cur, "new.tar"); err != nil {
		t.Errorf("the new directory's file is not found through the new descriptor: %v", err)
	}
	// The old reference still names the removed directory, not a reused
	// descriptor number.
	var st unix.Stat_t
	if err := unix.Fstat(int(old.Fd()), &st); err != nil || st.Ino == dirIno(t, p) {
		t.Errorf("old reference: %v, inode %d", err, st.Ino)
	}
	old.Release()
	// Released: the descriptor is closed (its number may be reused, but
	// never for the removed directory).
	if err := unix.Fstat(int(old.Fd()), &st); err == nil && st.Ino == removed {
		t.Error("released descriptor still open")
	}
	names, err := cur.Names()
	if err != nil || len(names) != 1 || names[0] != "new.tar" {
		t.Errorf("Names = %v, %v", names, err)
	}
}

// TestDirRefusals: a symlink in the directory's place, a group-writable
// directory and one owned by another user are refused, naming the fix.
func TestDirRefusals(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDir(link, me); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("symlink: %v", err)
	}
	if err := os.Chmod(real, 0o775); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenDir(real, me); err == nil || !strings.Contains(err.Error(), "chmod go-w") {
		t.Errorf("group-writable: %v", err)
	}
	if err := os.Chmod(real, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(real, me)
	if err != nil {
		t.Fatalf("0755: %v", err)
	}
	if _, err := OpenDir(real, DirRule{Owners: []uint32{12345}}); err == nil || !strings.Contains(err.Error(), "owned by uid") {
		t.Errorf("wrong owner: %v", err)
	}
	// Made unsafe while held: refused from then on, and usable again
	// once fixed.
	if err := os.Chmod(real, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err == nil {
		t.Error("a directory made world-writable is still used")
	}
	if err := os.Chmod(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err != nil {
		t.Error(err)
	}
	// Swapped for a symlink to the same directory: refused.
	moved := filepath.Join(base, "moved")
	if err := os.Rename(real, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(moved, real); err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("swapped for a symlink: %v", err)
	}
}

// bindMount mounts src on dst for the test (root only; skips otherwise).
func bindMount(t *testing.T, src, dst string) {
	t.Helper()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount needs CAP_SYS_ADMIN: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dst, unix.MNT_DETACH) })
}

// TestDirRemovedBehindBindMount: a hostPath volume is a bind mount; when
// the host removes and recreates the directory, the path inside still
// shows the removed one. That is refused with ErrDirRemoved (a restart is
// the cure), not used as if it were still the directory the kubelet
// writes to.
func TestDirRemovedBehindBindMount(t *testing.T) {
	base := t.TempDir()
	host, inside := filepath.Join(base, "host"), filepath.Join(base, "inside")
	for _, p := range []string{host, inside} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	bindMount(t, host, inside)
	d, err := OpenDir(inside, me)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.Remove(host); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(host, 0o700); err != nil {
		t.Fatal(err)
	}
	err = d.Check()
	if !errors.Is(err, ErrDirRemoved) || !errors.Is(err, ErrDirUnavailable) || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("Check: %v; want ErrDirRemoved naming a restart", err)
	}
}
