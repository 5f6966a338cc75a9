package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// TestGCNamespaceAuditPodNamedLikeItsTrail: checkpoints of a Kubernetes
// namespace named "audit" whose pod has gc's node name (laptop) share the
// prefix audit/laptop/ with gc's exported trail. Before a run gc checks
// that no other trail exports under its name; such a checkpoint is not a
// trail — neither before gc's first export, nor when its key sorts before
// the first segment (container "0") — so gc runs and deletes it by
// policy, and its own trail verifies from the store.
func TestGCNamespaceAuditPodNamedLikeItsTrail(t *testing.T) {
	f := newVaultFixture(t)
	ctx := context.Background()
	var inAudit []*manifest.Manifest
	for i, at := range []time.Duration{-2 * time.Hour, -time.Hour} {
		p, err := samplearchive.WriteDir(t.TempDir(), samplearchive.Options{Namespace: "audit", Pod: "laptop", Container: "0",
			Seed: int64(10 + i), CheckpointedAt: samplearchive.DefaultTime.Add(at)})
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := testvault.Put(ctx, f.st, f.keys, p, "node-a")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(m.Object, "audit/laptop/0/") {
			t.Fatalf("fixture %s is not under audit/laptop/0/", m.Object)
		}
		inAudit = append(inAudit, m)
	}
	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	for run, maxCount := range []string{"3", "2"} {
		if err := os.WriteFile(f.config, append(cfg, "retention: {global: {maxCount: "+maxCount+"}}\n"...), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, stderr, err := runCmd(t, "gc", "--config", f.config); err != nil {
			t.Fatalf("gc run %d with checkpoints under audit/laptop/: %v\n%s%s", run+1, err, out, stderr)
		}
		if _, err := f.st.Stat(ctx, inAudit[run].Objects().Manifest); err == nil {
			t.Errorf("gc run %d kept %s, the oldest checkpoint over maxCount %s", run+1, inAudit[run].Object, maxCount)
		}
	}
	for _, m := range f.manifests {
		if _, err := f.st.Stat(ctx, m.Objects().Manifest); err != nil {
			t.Errorf("gc deleted %s: %v", m.Object, err)
		}
	}
	if _, _, err := runCmd(t, "audit", "verify", "--config", f.config, "--from-store"); err != nil {
		t.Errorf("audit verify --from-store: %v", err)
	}
}

// TestListNamespacesNamedAuditAndGC: `ckvault list` on the store lists
// the checkpoints of namespaces named "audit" and "gc" — and nothing
// else that shares their prefix: not the exported audit segments
// (audit/<node>/…), not an intent an older GC left under gc/intents/.
func TestListNamespacesNamedAuditAndGC(t *testing.T) {
	f := newVaultFixture(t)
	ctx := context.Background()
	want := map[string]string{}
	for i, o := range []samplearchive.Options{
		{Namespace: "audit", Pod: "node-a", Container: "app"},
		{Namespace: "gc", Pod: "intents", Container: "app"},
	} {
		o.Seed = int64(20 + i)
		p, err := samplearchive.WriteDir(t.TempDir(), o)
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := testvault.Put(ctx, f.st, f.keys, p, "node-a")
		if err != nil {
			t.Fatal(err)
		}
		want[o.Namespace] = m.Object
	}
	// node-a's exported trail, and an older GC's intent for a checkpoint.
	l, err := audit.Open(filepath.Join(t.TempDir(), "state", audit.FileName), audit.Options{Node: "node-a", Signer: f.keys.Signer})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Append(ctx, audit.Record{Actor: "daemon", Action: "uploaded", Subject: want["audit"], Outcome: audit.OK}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.SignHead(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := l.Export(ctx, f.st, audit.ExportOptions{}); err != nil || len(res.Keys) != 1 {
		t.Fatalf("export: %v %v", res, err)
	}
	body := []byte(`{"base":"` + f.manifests[0].Object + `","policy":"global","limit":"maxAge","reason":"r","actor":"gc","time":"2026-11-30T12:00:00Z"}`)
	if _, err := f.st.Put(ctx, gc.LegacyIntentPrefix+f.manifests[0].Object+".intent", bytes.NewReader(body), int64(len(body)), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"audit", "gc"} {
		out, stderr, err := runCmd(t, "list", "--config", f.config, "--namespace", ns, "-o", "json")
		if err != nil {
			t.Fatalf("list --namespace %s: %v\n%s", ns, err, stderr)
		}
		var ents []listEntry
		if err := json.Unmarshal([]byte(out), &ents); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if len(ents) != 1 || !ents[0].Verified || !strings.HasPrefix(ents[0].Object, want[ns]) {
			t.Errorf("list --namespace %s: %s\nwant only %s, verified", ns, out, want[ns])
		}
	}
}
