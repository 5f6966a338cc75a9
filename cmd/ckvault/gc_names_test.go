package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
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
