package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/audit/auditsock"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

// TestResponderThroughDaemon runs a real daemon in this process (ckvault
// dev) and the responder commands against its config while it holds the
// audit trail: they record through its socket, as the caller's uid. Once
// the daemon stops, they record in the trail directly, and the trail the
// daemon signed verifies offline.
func TestResponderThroughDaemon(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var devOut, devErr bytes.Buffer
	h, err := startDev(ctx, &devOut, &devErr, dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, devErr.String())
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-h.Done; err != nil {
				t.Errorf("daemon: %v", err)
			}
		}
	}
	defer stop()

	// An archive written elsewhere and renamed in, so the test keeps the
	// original to compare with after the daemon shreds it.
	src, err := samplearchive.WriteDir(t.TempDir(), samplearchive.Options{Namespace: "payments", Pod: "api-0", Container: "server", Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	original, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(src)
	if err := os.Rename(src, filepath.Join(h.Config.CheckpointsDir, name)); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	p, err := h.Daemon.WaitVaulted(wctx, name)
	wcancel()
	if err != nil {
		t.Fatalf("%v\n%s", err, devErr.String())
	}
	daemonSeq, _ := h.Daemon.Audit().Last()

	// list and fetch while the daemon holds the trail.
	stdout, stderr, err := runCmd(t, "list", "--config", h.ConfigPath, "-o", "json")
	if err != nil {
		t.Fatalf("list with the daemon running: %v\n%s", err, stderr)
	}
	var ents []listEntry
	if err := json.Unmarshal([]byte(stdout), &ents); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	var id string
	for _, e := range ents {
		if strings.HasPrefix(e.Object, p.Object) {
			id = e.ID
		}
	}
	if id == "" {
		t.Fatalf("%s not listed: %s", p.Object, stdout)
	}
	out := filepath.Join(t.TempDir(), "fetched.tar")
	if _, stderr, err := runCmd(t, "fetch", id, "--config", h.ConfigPath, "-o", out); err != nil {
		t.Fatalf("fetch with the daemon running: %v\n%s", err, stderr)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, original) {
		t.Fatal("fetched archive differs from the original")
	}
	// An unknown id is refused, and the request recorded all the same.
	if _, _, err := runCmd(t, "fetch", "zzzzzz", "--config", h.ConfigPath, "-o", out+".2"); err == nil {
		t.Fatal("fetch of an unknown id succeeded")
	}

	// The records are in the daemon's log, with the kernel's uid as the
	// actor and the command's own claim as a detail.
	uid := "uid:" + strconv.Itoa(os.Getuid())
	page, err := h.Daemon.Audit().Query(ctx, audit.Filter{Actor: uid, Limit: audit.MaxLimit})
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range page.Records {
		if r.Seq <= daemonSeq {
			t.Errorf("record %d by %s predates the commands: %+v", r.Seq, uid, r)
		}
		if r.Node != h.Config.Node || r.Detail[auditsock.DetailClientActor] != localActor() {
			t.Errorf("record %d: node %q, detail %v", r.Seq, r.Node, r.Detail)
		}
		count[r.Action+"/"+string(r.Outcome)+"/"+r.Detail["phase"]]++
	}
	for k, n := range map[string]int{
		"listed/ok/intent": 1, "listed/ok/done": 1,
		"fetched/ok/intent": 2, // the good fetch and the unknown id
		"fetched/ok/done":   1, "fetched/error/done": 1,
	} {
		if count[k] != n {
			t.Errorf("%d records %s, want %d (all: %v)", count[k], k, n, count)
		}
	}
	if len(page.Records) != 6 {
		t.Errorf("%d records by %s, want 6: %+v", len(page.Records), uid, page.Records)
	}
	for _, r := range page.Records {
		if r.Action == "fetched" && r.Detail["phase"] == "done" && r.Outcome == audit.OK && r.Subject != p.Object {
			t.Errorf("fetch recorded under %q, want %q", r.Subject, p.Object)
		}
	}

	// Daemon stopped: the commands open the trail themselves, and the trail
	// the daemon signed verifies offline with the configured public key.
	stop()
	if _, stderr, err := runCmd(t, "list", "--config", h.ConfigPath); err != nil {
		t.Fatalf("list with the daemon stopped: %v\n%s", err, stderr)
	}
	stdout, _, err = runCmd(t, "audit", "verify", "--config", h.ConfigPath, "-o", "json")
	if err != nil {
		t.Fatalf("audit verify after the daemon stopped: %v\n%s", err, stdout)
	}
	var rep audit.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Heads == 0 || len(rep.Signers) != 1 || rep.Unsigned != 2 {
		t.Errorf("report: %d heads by %v, %d unsigned (want the daemon's heads, and the last list's 2 records unsigned)", rep.Heads, rep.Signers, rep.Unsigned)
	}
	l, err := audit.OpenReadOnly(audit.Path(h.Config.StateDir))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	last, err := l.Query(context.Background(), audit.Filter{Newest: true, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r := last.Records[0]; r.Action != "listed" || r.Actor != localActor() {
		t.Errorf("local record: %+v", r)
	}
}

// TestResponderAuditBrokenDaemon: when something answers on the daemon's
// socket but does not record, the command fails closed: it neither reads
// the vault nor falls back to a trail of its own.
func TestResponderAuditBrokenDaemon(t *testing.T) {
	f := newVaultFixture(t)
	if err := os.MkdirAll(f.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(f.stateDir, auditsock.SocketName)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a hung daemon: accepts, then hangs up
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, _, err = runCmd(t, "list", "--config", f.config)
	if err == nil || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "nothing was read") {
		t.Fatalf("list beside a broken daemon socket: %v", err)
	}
	if _, statErr := os.Stat(audit.Path(f.stateDir)); statErr == nil {
		t.Error("the command fell back to a local trail beside a live daemon socket")
	}
}
