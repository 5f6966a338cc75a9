package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

// readyz returns /readyz's status code and body.
func readyz(t *testing.T, r *running) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + r.d.MetricsAddr() + "/readyz")
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady waits until /readyz answers want.
func waitReady(t *testing.T, r *running, want int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := readyz(t, r)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz answers %d (%s), want %d", code, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCheckpointsDirRecreated: the checkpoints directory is removed and
// created again while the daemon runs. While it is missing the daemon is
// not ready; once it is back, archives written into the new directory are
// vaulted and shredded there.
func TestCheckpointsDirRecreated(t *testing.T) {
	e := newEnv(t, envOpt{rescan: "1s"})
	r := startDaemon(t, e, Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	first, err := samplearchive.WriteDir(e.ckDir, samplearchive.Options{Pod: "before", Seed: 1})
	must(t, err)
	waitVaulted(t, r, filepath.Base(first), 20*time.Second)
	waitReady(t, r, http.StatusOK)

	must(t, os.RemoveAll(e.ckDir))
	body := waitReady(t, r, http.StatusServiceUnavailable)
	t.Logf("while missing: %s", body)

	must(t, os.Mkdir(e.ckDir, 0o700))
	waitReady(t, r, http.StatusOK)
	for i := range 3 {
		p, err := samplearchive.WriteDir(e.ckDir, samplearchive.Options{Pod: fmt.Sprintf("after-%d", i), Seed: int64(10 + i)})
		must(t, err)
		waitVaulted(t, r, filepath.Base(p), 20*time.Second)
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s still in the new directory after it was vaulted: %v", p, err)
		}
	}
	must(t, r.stop())
	recs := trail(t, e)
	var events []string
	for _, rec := range recs {
		if rec.Action == "checkpoints-dir" {
			events = append(events, rec.Detail["event"])
		}
	}
	t.Logf("checkpoints-dir records: %v", events)
	if len(events) < 3 || events[len(events)-1] != "replaced: reopened" {
		t.Errorf("checkpoints-dir records %v; want opened, refused, replaced: reopened", events)
	}
}

// TestCheckpointsDirSwappedForSymlink: the directory is replaced by a
// symlink to another directory. The daemon refuses it (not ready) and
// reads nothing there, and resumes once a real directory is back.
func TestCheckpointsDirSwappedForSymlink(t *testing.T) {
	e := newEnv(t, envOpt{rescan: "1s"})
	r := startDaemon(t, e, Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	waitReady(t, r, http.StatusOK)

	elsewhere := filepath.Join(e.dir, "elsewhere")
	must(t, os.Mkdir(elsewhere, 0o700))
	lured, err := samplearchive.WriteDir(elsewhere, samplearchive.Options{Pod: "lured", Seed: 2})
	must(t, err)
	must(t, os.RemoveAll(e.ckDir))
	must(t, os.Symlink(elsewhere, e.ckDir))
	body := waitReady(t, r, http.StatusServiceUnavailable)
	t.Logf("with a symlink: %s", body)
	time.Sleep(2500 * time.Millisecond) // rescans and retries
	if _, err := os.Lstat(lured); err != nil {
		t.Fatalf("the archive behind the symlink was touched: %v", err)
	}

	must(t, os.Remove(e.ckDir))
	must(t, os.Mkdir(e.ckDir, 0o700))
	waitReady(t, r, http.StatusOK)
	p, err := samplearchive.WriteDir(e.ckDir, samplearchive.Options{Pod: "real", Seed: 3})
	must(t, err)
	waitVaulted(t, r, filepath.Base(p), 20*time.Second)
	must(t, r.stop())
	for _, rec := range trail(t, e) {
		if rec.Subject == filepath.Base(lured) {
			t.Errorf("the archive behind the symlink reached the audit trail: %s %v", rec.Action, rec.Detail)
		}
	}
	if _, err := os.Lstat(lured); err != nil {
		t.Fatalf("the archive behind the symlink was touched: %v", err)
	}
}

// TestCheckpointsDirUnsafeMode: a group-writable directory is refused at
// start, naming the fix.
func TestCheckpointsDirUnsafeMode(t *testing.T) {
	e := newEnv(t, envOpt{})
	must(t, os.Chmod(e.ckDir, 0o770))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := New(ctx, e.cfg, Options{Logger: quietLogger(t)})
	must(t, err)
	err = d.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "chmod go-w") {
		t.Fatalf("Run: %v; want a refusal naming chmod go-w", err)
	}
}

// TestCheckpointsDirRemovedBehindMount: the checkpoints directory is a
// bind mount (as a hostPath volume is) and the host removes and recreates
// it. From inside, the path keeps showing the removed directory: the
// daemon must say so on /readyz and fail /healthz, so that the kubelet
// restarts it onto the new directory, instead of waiting on a dead one.
func TestCheckpointsDirRemovedBehindMount(t *testing.T) {
	e := newEnv(t, envOpt{})
	host := filepath.Join(e.dir, "host-checkpoints")
	must(t, os.Mkdir(host, 0o700))
	if err := unix.Mount(host, e.ckDir, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount needs CAP_SYS_ADMIN: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(e.ckDir, unix.MNT_DETACH) })
	r := startDaemon(t, e, Options{})
	waitReady(t, r, http.StatusOK)
	healthz := func() int {
		resp, err := http.Get("http://" + r.d.MetricsAddr() + "/healthz")
		must(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := healthz(); c != http.StatusOK {
		t.Fatalf("/healthz %d before", c)
	}
	must(t, os.Remove(host))
	must(t, os.Mkdir(host, 0o700))
	body := waitReady(t, r, http.StatusServiceUnavailable)
	if !strings.Contains(body, "restart") {
		t.Errorf("/readyz does not name the fix: %s", body)
	}
	if c := healthz(); c != http.StatusServiceUnavailable {
		t.Errorf("/healthz %d; want 503 so that the pod is restarted", c)
	}
}
