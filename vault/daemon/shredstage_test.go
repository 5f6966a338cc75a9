package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// paxFirst re-encodes a tar so that its first header carries a PAX
// record: its first 512-byte block is then a PAX extended header, which
// does not parse as a tar entry on its own.
func paxFirst(t testing.TB, in []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(in)), tar.NewWriter(&out)
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		if i == 0 {
			h.Format = tar.FormatPAX
			h.PAXRecords = map[string]string{"comment": "written by a runtime that uses PAX headers"}
		}
		must(t, tw.WriteHeader(h))
		_, err = io.Copy(tw, tr)
		must(t, err)
	}
	must(t, tw.Close())
	b := out.Bytes()
	if _, err := tar.NewReader(bytes.NewReader(b[:512])).Next(); err == nil {
		t.Fatal("test archive: the first block parses alone; want a PAX header that does not")
	}
	return b
}

// runChildUntilExit runs a child daemon that crashes at spec and waits for
// it to die there.
func runChildUntilExit(t *testing.T, e *env, spec string) {
	t.Helper()
	crashLog := filepath.Join(e.dir, "crashes.log")
	cmd := startChild(t, e, crashAtEnv+"="+spec, crashLogEnv+"="+crashLog)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("crash point %s not reached in 60 s", spec)
	}
	b, _ := os.ReadFile(crashLog)
	if !strings.HasPrefix(string(b), spec+" ") {
		t.Fatalf("the child did not die at %s (log %q)", spec, b)
	}
	os.Remove(crashLog)
}

// runChildUntilEmpty runs a child daemon until no archive is left in the
// checkpoints directory (or 60 s), then stops it.
func runChildUntilEmpty(t *testing.T, e *env) {
	t.Helper()
	cmd := startChild(t, e)
	deadline := time.Now().Add(60 * time.Second)
	for len(listTars(t, e.ckDir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("daemon did not stop cleanly: %v", err)
	}
}

// vaultedBases lists the base keys of the checkpoints in the store.
func vaultedBases(t *testing.T, e *env) map[string]int {
	t.Helper()
	objs, _, err := openStore(t, e).List(context.Background(), "", "", 1000)
	must(t, err)
	out := map[string]int{}
	for _, o := range objs {
		if b, ok := manifest.BaseKeyOf(o.Key); ok && !strings.HasPrefix(o.Key, "audit/") {
			out[b]++
		}
	}
	return out
}

// findVersion returns the progress record of name with the given size.
func findVersion(t *testing.T, e *env, name string, size int) *Progress {
	t.Helper()
	s, err := openState(e.stateDir)
	must(t, err)
	defer s.Close()
	all, err := s.All()
	must(t, err)
	for i := range all {
		if all[i].Name == name && all[i].Size == int64(size) {
			return &all[i]
		}
	}
	t.Fatalf("no progress record of %s with %d bytes", name, size)
	return nil
}

// TestRewrittenInPlaceBeforeShred: the daemon dies after the shred of a
// proven archive was announced, and before anything was destroyed; the
// runtime then writes a new checkpoint in place at the same name (same
// inode, smaller, PAX headers). After the restart the new archive must be
// vaulted, not taken for the debris of the interrupted shred.
func TestRewrittenInPlaceBeforeShred(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child daemons")
	}
	e := newEnv(t, envOpt{rescan: "1s"})
	o := samplearchive.Options{Namespace: "ns", Pod: "web-0", Container: "app", Seed: 1, MemoryBytes: 512 << 10}
	path, err := samplearchive.WriteDir(e.ckDir, o)
	must(t, err)
	name := filepath.Base(path)
	runChildUntilExit(t, e, "shredding/intent-audited")

	o.Seed, o.MemoryBytes = 2, 64<<10
	newer := paxFirst(t, archiveBytes(t, o))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	must(t, err)
	_, err = f.Write(newer)
	must(t, err)
	must(t, f.Close())

	runChildUntilEmpty(t, e)
	if n := len(vaultedBases(t, e)); n != 2 {
		t.Fatalf("%d checkpoints in the store, want 2: the archive written in place was destroyed unvaulted", n)
	}
	p := findVersion(t, e, name, len(newer))
	if p.Stage != StageShredded {
		t.Fatalf("new archive in stage %s", p.Stage)
	}
	checkVaulted(t, e, openStore(t, e), p, newer)
	checkNoShredding(t, e)
}

// TestClaimedDebrisAndNewArchive: the daemon dies mid-way through
// destroying a claimed archive (half overwritten under its debris name);
// the runtime then writes a new checkpoint at the archive's name. After the
// restart the debris is destroyed and the new archive vaulted.
func TestClaimedDebrisAndNewArchive(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child daemons")
	}
	e := newEnv(t, envOpt{rescan: "1s"})
	o := samplearchive.Options{Namespace: "ns", Pod: "web-0", Container: "app", Seed: 1, MemoryBytes: 512 << 10}
	path, err := samplearchive.WriteDir(e.ckDir, o)
	must(t, err)
	name := filepath.Base(path)
	runChildUntilExit(t, e, ptShredClaimed+"+overwrite")
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("the archive's name still exists after it was claimed: %v", err)
	}

	o.Seed, o.MemoryBytes = 2, 64<<10
	newer := paxFirst(t, archiveBytes(t, o))
	must(t, os.WriteFile(path, newer, 0o600))

	runChildUntilEmpty(t, e)
	if n := len(vaultedBases(t, e)); n != 2 {
		t.Fatalf("%d checkpoints in the store, want 2", n)
	}
	checkVaulted(t, e, openStore(t, e), findVersion(t, e, name, len(newer)), newer)
	checkNoShredding(t, e)
}

// checkNoShredding: no version is left mid-shred and no debris remains.
func checkNoShredding(t *testing.T, e *env) {
	t.Helper()
	s, err := openState(e.stateDir)
	must(t, err)
	defer s.Close()
	all, err := s.All()
	must(t, err)
	for _, p := range all {
		if !p.Stage.Terminal() {
			t.Errorf("%s (inode %d, %d bytes) left in stage %s", p.Name, p.Ino, p.Size, p.Stage)
		}
	}
	ents, err := os.ReadDir(e.ckDir)
	must(t, err)
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), ".ckvault-shred-") {
			t.Errorf("shred debris left behind: %s", de.Name())
		}
	}
}
