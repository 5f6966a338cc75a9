package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/gc"
)

// TestGCCommand: pin the older of two checkpoints under maxCount 1, so the
// newer one is the one to go; the dry run's plan is what the real run
// deletes; the pinned one survives; unpin and everything is audited.
func TestGCCommand(t *testing.T) {
	f := newVaultFixture(t)
	older, newer := 0, 1
	if f.manifests[1].CheckpointedAt.Before(f.manifests[0].CheckpointedAt.Time) {
		older, newer = 1, 0
	}
	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.config, append(cfg, "retention: {global: {maxCount: 1}}\n"...), 0o600); err != nil {
		t.Fatal(err)
	}

	if _, _, err := runCmd(t, "gc", "--config", f.config, "--dry-run", "-o", "yaml"); err == nil {
		t.Error("gc -o yaml succeeded")
	}
	out, _, err := runCmd(t, "pin", f.id(older), "--config", f.config)
	if err != nil || !strings.Contains(out, "pinned "+f.manifests[older].Object) {
		t.Fatalf("pin: %q, %v", out, err)
	}

	var dry, real gcReport
	out, _, err = runCmd(t, "gc", "--config", f.config, "--dry-run", "-o", "json")
	if err != nil {
		t.Fatalf("gc --dry-run: %v", err)
	}
	if err := json.Unmarshal([]byte(out), &dry); err != nil {
		t.Fatal(err)
	}
	if len(dry.Plan.Delete) != 1 || dry.Plan.Delete[0].Base != f.manifests[newer].Object || dry.Plan.Delete[0].Policy != "global" {
		t.Fatalf("dry run plans %+v; want only the newer, unpinned checkpoint under the global policy", dry.Plan.Delete)
	}
	if len(dry.Plan.Pinned) != 1 || dry.Plan.Pinned[0].Base != f.manifests[older].Object {
		t.Errorf("dry run: pinned = %+v", dry.Plan.Pinned)
	}
	if _, err := f.st.Stat(context.Background(), f.manifests[newer].Objects().Ciphertext); err != nil {
		t.Fatalf("the dry run deleted something: %v", err)
	}
	tbl, _, err := runCmd(t, "gc", "--config", f.config, "--dry-run")
	if err != nil || !strings.Contains(tbl, "WOULD DELETE  "+f.manifests[newer].Object) || !strings.Contains(tbl, "PINNED") {
		t.Errorf("gc --dry-run table:\n%s%v", tbl, err)
	}

	out, _, err = runCmd(t, "gc", "--config", f.config, "-o", "json")
	if err != nil {
		t.Fatalf("gc: %v", err)
	}
	if err := json.Unmarshal([]byte(out), &real); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(real.Deleted)
	want, _ := json.Marshal(dry.Plan.Delete)
	if string(got) != string(want) {
		t.Errorf("the real run deleted\n%s\nthe dry run planned\n%s", got, want)
	}
	out, _, err = runCmd(t, "list", "--config", f.config, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, f.manifests[older].Objects().Ciphertext) || strings.Contains(out, f.manifests[newer].Object) {
		t.Errorf("after gc, list shows:\n%s", out)
	}
	if _, _, err := runCmd(t, "unpin", f.id(older), "--config", f.config); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCmd(t, "gc", "--config", f.config, "--dry-run", "-o", "json")
	if err != nil || strings.Contains(out, `"base"`) {
		t.Errorf("after unpin, maxCount 1 with one checkpoint: plan %s, %v", out, err)
	}

	l, err := audit.OpenReadOnly(audit.Path(f.stateDir))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for action, subject := range map[string]string{gc.ActionPinned: f.manifests[older].Object, gc.ActionUnpin: f.manifests[older].Object,
		gc.ActionDeleted: f.manifests[newer].Object} {
		p, err := l.Query(context.Background(), audit.Filter{Action: action, Subject: subject})
		if err != nil || len(p.Records) != 2 {
			t.Errorf("audit records of %s %s: %d, %v; want intent and outcome", action, subject, len(p.Records), err)
		}
	}
}
