package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
)

// pemSigner signs heads the way the daemon's *signing.Signer does (raw
// DER), with a plain in-memory key.
type pemSigner struct{ k *ecdsa.PrivateKey }

func (s pemSigner) SignDigest(_ context.Context, d [32]byte) ([]byte, error) {
	return ecdsa.SignASN1(rand.Reader, s.k, d[:])
}
func (s pemSigner) KeyHint() string { return "test" }

type auditFixture struct {
	dir, config, stateDir, storeDir string
	signer                          pemSigner
}

func newAuditFixture(t *testing.T) *auditFixture {
	t.Helper()
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	pub := filepath.Join(dir, "signing.pub")
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	f := &auditFixture{dir: dir, config: filepath.Join(dir, "config.yaml"),
		stateDir: filepath.Join(dir, "state"), storeDir: filepath.Join(dir, "store"), signer: pemSigner{k}}
	cfg := fmt.Sprintf(`node: node-a
stateDir: %s
checkpointsDir: %s
store:
  url: file://%s
recipients: [age1ay78k3va00z4gxyk8phat6nzzd602f83j8eu4xycr50uj6rldvuqx50l84]
signing:
  key: %s
  publicKey: %s
`, f.stateDir, filepath.Join(dir, "checkpoints"), f.storeDir, filepath.Join(dir, "signing.key"), pub)
	if err := os.WriteFile(f.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// A log with 30 records, heads every 10, exported to the file store.
	l, err := audit.Open(audit.Path(f.stateDir), audit.Options{Node: "node-a", Signer: f.signer, SignEvery: 10, SignInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 30; i++ {
		r := audit.Record{Actor: "daemon", Action: "uploaded", Subject: fmt.Sprintf("obj-%d", i), Namespace: "default", Pod: "api", Outcome: audit.OK}
		if i%3 == 0 {
			r.Namespace, r.Action, r.Outcome = "payments", "fetched", audit.Denied
		}
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			l.SignHead(ctx)
		}
	}
	st, _ := filestore.New(f.storeDir)
	if _, err := l.Export(ctx, st, audit.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

func runAudit(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"audit"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestAuditQueryCommand(t *testing.T) {
	f := newAuditFixture(t)
	for _, src := range [][]string{nil, {"--from-store"}} {
		out, err := runAudit(t, append([]string{"query", "--config", f.config, "--namespace", "payments", "--outcome", "denied", "--since", "1h", "-o", "json"}, src...)...)
		if err != nil {
			t.Fatal(err)
		}
		var recs []map[string]any
		if err := json.Unmarshal([]byte(out), &recs); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if len(recs) != 10 {
			t.Fatalf("%v: %d records", src, len(recs))
		}
		for _, k := range []string{"seq", "time", "node", "actor", "action", "subject", "outcome"} {
			if _, ok := recs[0][k]; !ok {
				t.Fatalf("json lacks %q: %v", k, recs[0])
			}
		}
	}
	out, err := runAudit(t, "query", "--config", f.config, "--limit", "5", "--newest")
	if err != nil || strings.Count(out, "\n") != 6 || !strings.Contains(strings.Split(out, "\n")[1], "obj-30") {
		t.Fatalf("table: %v\n%s", err, out)
	}
	out, err = runAudit(t, "query", "--config", f.config, "-o", "jsonl", "--until", time.Now().Add(-time.Hour).Format(time.RFC3339))
	if err != nil || out != "" {
		t.Fatalf("until an hour ago: %v %q", err, out)
	}
	for _, bad := range [][]string{{"--since", "yesterday"}, {"--outcome", "maybe"}, {"-o", "yaml"}} {
		_, err := runAudit(t, append([]string{"query", "--config", f.config}, bad...)...)
		if exitCode(err) != exitUsage {
			t.Errorf("%v: exit %d (%v)", bad, exitCode(err), err)
		}
	}
}

func TestAuditVerifyCommand(t *testing.T) {
	f := newAuditFixture(t)
	for _, src := range [][]string{nil, {"--from-store"}} {
		out, err := runAudit(t, append([]string{"verify", "--config", f.config}, src...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", src, err, out)
		}
		if !strings.Contains(out, "30 records") {
			t.Fatalf("%s", out)
		}
	}
	// Tamper with record 14 in the database.
	db, err := bolt.Open(audit.Path(f.stateDir), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("records"))
		k := []byte{0, 0, 0, 0, 0, 0, 0, 14}
		v := bytes.Replace(b.Get(k), []byte("obj-14"), []byte("obj-99"), 1)
		return b.Put(k, v)
	})
	db.Close()
	out, err := runAudit(t, "verify", "--config", f.config)
	if exitCode(err) != exitVerifyFail || !strings.Contains(err.Error(), "seq 14") {
		t.Fatalf("exit %d: %v\n%s", exitCode(err), err, out)
	}
	// A held database gets a clear message.
	l, err := audit.Open(audit.Path(f.stateDir), audit.Options{Node: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = runAudit(t, "query", "--config", f.config)
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("locked: %v", err)
	}
}

// TestAuditQueryFromStoreForgedSegment: a segment exported under a key the
// auditor does not trust (anyone who can write to the store could write
// one) is never printed as a record; query names it and exits 3.
func TestAuditQueryFromStoreForgedSegment(t *testing.T) {
	f := newAuditFixture(t)
	forger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	l, err := audit.Open(filepath.Join(t.TempDir(), "forged", audit.FileName), audit.Options{Node: "node-z", Signer: pemSigner{forger}, SignEvery: 10, SignInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := l.Append(ctx, audit.Record{Actor: "daemon", Action: "deleted", Subject: fmt.Sprintf("forged-%d", i), Namespace: "payments", Outcome: audit.OK}); err != nil {
			t.Fatal(err)
		}
	}
	l.SignHead(ctx)
	st, _ := filestore.New(f.storeDir)
	if _, err := l.Export(ctx, st, audit.ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	l.Close()

	out, err := runAudit(t, "query", "--config", f.config, "--from-store", "-o", "jsonl")
	if exitCode(err) != exitVerifyFail || !strings.Contains(err.Error(), "node-z") {
		t.Fatalf("exit %d (%v), want %d naming node-z's segment", exitCode(err), err, exitVerifyFail)
	}
	if strings.Contains(out, "forged-") || strings.Count(out, "\n") != 30 {
		t.Fatalf("printed %d records, want node-a's 30 and none of the forged ones:\n%s", strings.Count(out, "\n"), out)
	}
}
