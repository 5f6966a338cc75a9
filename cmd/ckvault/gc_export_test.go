package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
	"github.com/checkpoint-vault/ckvault/vault/store/storetest"
)

// TestGCExportsAuditTrail runs `ckvault gc` as the CronJob does — no node
// daemon, its own stateDir — against MinIO over TLS, then throws that
// stateDir away (the pod is gone) and reads the trail back from the store
// on another machine: the deletion, with its policy, and the run with its
// governance bypass are there (`audit query --from-store`), and the
// exported trail verifies (`audit verify --from-store`). A later GC whose
// clock is two days ahead, with orphanGrace long past for every object
// under the prefix, deletes a real orphan but leaves every exported
// segment version in place. A real run without a usable signing key
// refuses before deleting anything.
func TestGCExportsAuditTrail(t *testing.T) {
	srv := testservers.Shared(t, testservers.MinIO)
	ctx := context.Background()
	dir := t.TempDir()
	keys, err := testvault.NewKeys(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	os.WriteFile(ak, []byte(srv.AccessKey+"\n"), 0o600)
	os.WriteFile(sk, []byte(srv.SecretKey+"\n"), 0o600)
	url := srv.StoreURL(srv.Bucket, strings.TrimSuffix(storetest.RandomPrefix(), "/"))
	config := func(name, stateDir, signingKey string) string {
		p := filepath.Join(dir, name+".yaml")
		y := fmt.Sprintf(`node: ckvault-gc
stateDir: %s
store:
  url: %s
  caFile: %s
  pathStyle: path
  accessKeyFile: %s
  secretKeyFile: %s
recipients: [%s]
signing:
  key: %s
  publicKey: %s
retention:
  global: {maxCount: 1}
`, stateDir, url, srv.CAFile, ak, sk, keys.Recipient, signingKey, filepath.Join(dir, "signing.pub"))
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	podState := filepath.Join(dir, "pod-state")
	gcConfig := config("gc", podState, filepath.Join(dir, "signing.key"))
	cfg, err := policy.Load(gcConfig)
	if err != nil {
		t.Fatal(err)
	}
	st, err := storeconfig.Open(cfg.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ms []*manifest.Manifest
	for i := range 2 {
		p, err := samplearchive.WriteDir(t.TempDir(), samplearchive.Options{Namespace: "payments", Pod: "api-0", Seed: int64(i),
			MemoryBytes: 64 << 10, CheckpointedAt: samplearchive.DefaultTime.Add(time.Duration(i) * time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := testvault.Put(ctx, st, keys, p, "node-a")
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	older := ms[0] // maxCount 1: the older one goes

	// Without the signing key, a real run refuses and deletes nothing.
	noKey := config("nokey", filepath.Join(dir, "nokey-state"), filepath.Join(dir, "missing.key"))
	if _, _, err := runCmd(t, "gc", "--config", noKey); err == nil || !strings.Contains(err.Error(), "missing.key") || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("gc without its signing key: %v", err)
	}
	if _, err := st.Stat(ctx, older.Objects().Manifest); err != nil {
		t.Fatalf("gc without its signing key deleted something: %v", err)
	}

	if out, stderr, err := runCmd(t, "gc", "--config", gcConfig, "--bypass-governance"); err != nil {
		t.Fatalf("gc: %v\n%s%s", err, out, stderr)
	}
	if _, err := st.Stat(ctx, older.Objects().Manifest); err == nil {
		t.Fatal("gc did not delete the older checkpoint")
	}
	if err := os.RemoveAll(podState); err != nil { // the CronJob's pod is gone
		t.Fatal(err)
	}

	// Another machine reads the exported trail.
	reader := config("reader", filepath.Join(dir, "reader-state"), filepath.Join(dir, "signing.key"))
	query := func(action string) []audit.Record {
		t.Helper()
		out, stderr, err := runCmd(t, "audit", "query", "--config", reader, "--from-store", "--action", action, "-o", "json")
		if err != nil {
			t.Fatalf("audit query --from-store --action %s: %v\n%s", action, err, stderr)
		}
		var recs []audit.Record
		if err := json.Unmarshal([]byte(out), &recs); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return recs
	}
	var phases []string
	for _, r := range query(gc.ActionDeleted) {
		if r.Node != "ckvault-gc" || r.Subject != older.Object {
			t.Errorf("deleted record %+v: want node ckvault-gc, subject %s", r, older.Object)
			continue
		}
		if r.Detail["policy"] != "global" {
			t.Errorf("deleted record without its policy: %+v", r)
		}
		phases = append(phases, r.Detail["phase"])
	}
	if len(phases) != 2 {
		t.Errorf("exported deletion records of %s: phases %v, want intent and outcome", older.Object, phases)
	}
	bypass := false
	for _, r := range query(gc.ActionRun) {
		bypass = bypass || r.Detail["bypassGovernance"] == "true"
	}
	if !bypass {
		t.Error("the exported gc run records do not say that governance bypass was asked for")
	}
	out, stderr, err := runCmd(t, "audit", "verify", "--config", reader, "--from-store")
	if err != nil || !strings.Contains(out, "exported audit trail in the store") {
		t.Fatalf("audit verify --from-store: %v\n%s%s", err, out, stderr)
	}

	// Exported segments are never deleted by GC, even when every object
	// without a manifest is past orphanGrace.
	vs, ok := st.(gc.Store)
	if !ok {
		t.Fatalf("%T is not a gc.Store", st)
	}
	segments := func() map[string]bool {
		t.Helper()
		seen := map[string]bool{}
		if err := vs.ListVersions(ctx, audit.SegmentPrefix, func(v store.Version) error {
			if !v.DeleteMarker {
				seen[v.Key+"@"+v.VersionID] = true
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return seen
	}
	before := segments()
	if len(before) == 0 {
		t.Fatal("no exported segment under audit/")
	}
	orphan := "payments/api-0/app/20260101T000000Z-node-a-0123456789abcdef.tar.age"
	if _, err := st.Put(ctx, orphan, bytes.NewReader([]byte("an abandoned upload")), 19, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(filepath.Join(t.TempDir(), "state", audit.FileName), audit.Options{Node: "later"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	later := func() time.Time { return time.Now().Add(48 * time.Hour) }
	if _, _, err := gc.Run(ctx, vs, gc.Options{Policy: cfg.Retention, Trusted: keys.Trusted, Audit: l, Actor: "gc-test", Now: later}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, orphan); err == nil {
		t.Error("the orphan past its grace is still there: this run shows nothing about segments")
	}
	after := segments()
	for k := range before {
		if !after[k] {
			t.Errorf("GC deleted exported segment version %s", k)
		}
	}
}

// TestGCExportRetried: when the export at the end of a run fails, gc says
// so (non-zero exit) after deleting, keeps the records in stateDir, and
// the next run exports them: the first run's deletion reaches the store.
func TestGCExportRetried(t *testing.T) {
	f := newVaultFixture(t)
	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.config, append(cfg, "retention: {global: {maxCount: 1}}\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	older := f.manifests[0]
	if f.manifests[1].CheckpointedAt.Before(older.CheckpointedAt.Time) {
		older = f.manifests[1]
	}
	// A file where the file store keeps the audit/ directory (under its
	// data/): every segment Put fails, even for root, unlike a permission.
	// Were the layout to change, the first gc would succeed and the test
	// fail, not pass vacuously.
	blocker := filepath.Join(f.dir, "store", "data", "audit")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCmd(t, "gc", "--config", f.config)
	if err == nil || !strings.Contains(err.Error(), "not in the store yet") || !strings.Contains(err.Error(), "next run exports them") {
		t.Fatalf("gc whose export fails: %v", err)
	}
	if _, err := f.st.Stat(context.Background(), older.Objects().Manifest); err == nil {
		t.Fatal("the first run did not delete the older checkpoint")
	}
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, "gc", "--config", f.config); err != nil {
		t.Fatalf("second gc: %v", err)
	}
	out, _, err := runCmd(t, "audit", "query", "--config", f.config, "--from-store", "--action", gc.ActionDeleted, "--subject", older.Object, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(recs) != 2 {
		t.Errorf("the first run's deletion of %s in the store: %d records, want intent and outcome\n%s", older.Object, len(recs), out)
	}
	if _, _, err := runCmd(t, "audit", "verify", "--config", f.config, "--from-store"); err != nil {
		t.Errorf("audit verify --from-store: %v", err)
	}
}

// TestGCRefusesAnotherTrailsName: gc run with a node's config (node:
// laptop) where the store already holds that node's exported trail would
// interleave a second hash chain under audit/laptop/; it refuses before
// deleting anything, and runs under a name of its own.
func TestGCRefusesAnotherTrailsName(t *testing.T) {
	f := newVaultFixture(t)
	ctx := context.Background()
	other, err := audit.Open(filepath.Join(t.TempDir(), "state", audit.FileName), audit.Options{Node: "laptop", Signer: f.keys.Signer})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Append(ctx, audit.Record{Actor: "daemon", Action: "uploaded", Subject: "x", Outcome: audit.OK}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.SignHead(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := other.Export(ctx, f.st, audit.ExportOptions{}); err != nil || len(res.Keys) != 1 {
		t.Fatalf("exporting the node's own trail: %v %v", res, err)
	}
	other.Close()

	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, "retention: {global: {maxCount: 1}}\n"...)
	if err := os.WriteFile(f.config, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCmd(t, "gc", "--config", f.config)
	if err == nil || !strings.Contains(err.Error(), `audit trail of node "laptop"`) || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("gc under another trail's name: %v", err)
	}
	for _, m := range f.manifests {
		if _, err := f.st.Stat(ctx, m.Objects().Manifest); err != nil {
			t.Fatalf("gc refused yet deleted %s: %v", m.Object, err)
		}
	}
	renamed := strings.Replace(string(cfg), "node: laptop\n", "node: laptop-gc\n", 1)
	if err := os.WriteFile(f.config, []byte(renamed), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCmd(t, "gc", "--config", f.config); err != nil {
		t.Fatalf("gc under a name of its own: %v", err)
	}
	if _, _, err := runCmd(t, "audit", "verify", "--config", f.config, "--from-store"); err != nil {
		t.Errorf("audit verify --from-store: %v", err)
	}
}
