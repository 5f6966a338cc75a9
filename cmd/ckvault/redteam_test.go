package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/service"
)

// TestRedteamServiceKeyVouchesForNoCheckpoint: the vault service signs its
// own audit heads with a key of its own, which auditors must trust to read
// its exported trail. A compromised service holds that key. Trusted as an
// audit key (--trusted-audit-key, signing.auditKeys) it verifies the
// service's records, and never a manifest: a checkpoint the service signed
// — sealed to the responder, claiming namespace payments — is refused by
// fetch (exit 3) and shown unverified by list, in client mode and direct
// mode alike. (Before audit keys existed, the only way to read the
// service's records was to trust its key with --trusted-key, and then
// fetch accepted the forgery as "fetched and verified".)
func TestRedteamServiceKeyVouchesForNoCheckpoint(t *testing.T) {
	f := newVaultFixture(t)
	ctx := context.Background()
	dir := t.TempDir()
	svcDir := filepath.Join(dir, "svc")
	if err := os.Mkdir(svcDir, 0o700); err != nil {
		t.Fatal(err)
	}
	svcKeys, err := testvault.NewKeys(svcDir, false)
	if err != nil {
		t.Fatal(err)
	}
	nodePub, svcPub := filepath.Join(f.dir, "signing.pub"), filepath.Join(svcDir, "signing.pub")

	// The forgery: sealed to the responder's recipient, signed by the
	// service's key, under a key of namespace payments.
	forger := *f.keys
	forger.Signer = svcKeys.Signer
	p, err := samplearchive.WriteDir(t.TempDir(), samplearchive.Options{Namespace: "payments", Pod: "api-0", Container: "server", Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	forged, _, err := testvault.Put(ctx, f.st, &forger, p, "node-a")
	if err != nil {
		t.Fatal(err)
	}

	ca, err := testservers.NewCA(dir, "serve CA")
	if err != nil {
		t.Fatal(err)
	}
	crt, key, _ := ca.Issue(dir, "serve.crt", "serve.key")
	aCrt, aKey, _ := ca.IssueClient(dir, "alice", "alice", "")
	base, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	serveCfg := filepath.Join(dir, "serve.yaml")
	os.WriteFile(serveCfg, append(base, fmt.Sprintf(`serve:
  listen: 127.0.0.1:0
  tlsCert: %s
  tlsKey: %s
  clientCA: %s
  roles:
    - {name: all, verbs: [list, get, fetch, audit], namespaces: ["*"], subjects: [{user: alice}]}
`, crt, key, ca.CertFile)...), 0o600)
	cfg, err := policy.Load(serveCfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = filepath.Join(dir, "serve-state")
	auditKeys, err := signing.LoadTrustedKeys(nodePub, svcPub)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := service.Start(ctx, cfg, service.Setup{Store: f.st, Trusted: f.keys.Trusted, AuditTrusted: auditKeys, Signer: svcKeys.Signer})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	os.WriteFile(filepath.Join(dir, "none.yaml"), nil, 0o600)
	as := func(args ...string) []string {
		return append(args, "--server", "https://"+srv.Addr, "--ca", ca.CertFile, "--cert", aCrt, "--key", aKey,
			"--client-config", filepath.Join(dir, "none.yaml"), "--trusted-key", nodePub, "--trusted-audit-key", svcPub)
	}

	// Client mode. The service's index itself does not vouch for it.
	out, _, err := runCmd(t, as("list")...)
	if exitCode(err) != exitVerifyFail || !strings.Contains(out, "UNVERIFIED") {
		t.Errorf("list --server: exit %d (%v), want 3 with the forgery UNVERIFIED\n%s", exitCode(err), err, out)
	}
	outFile := filepath.Join(t.TempDir(), "forged.tar")
	out, _, err = runCmd(t, as("fetch", forged.Object, "-i", f.identity, "-o", outFile)...)
	if exitCode(err) != exitVerifyFail || !strings.Contains(fmt.Sprint(err), "manifest signature") {
		t.Errorf("fetch --server of a checkpoint signed by the service's audit key: exit %d (%v), want 3 naming the manifest signature\n%s", exitCode(err), err, out)
	}
	if _, serr := os.Lstat(outFile); serr == nil {
		t.Errorf("the forged checkpoint was written to %s", outFile)
	}
	good := filepath.Join(t.TempDir(), "good.tar")
	if _, _, err := runCmd(t, as("fetch", f.id(0), "-i", f.identity, "-o", good)...); err != nil {
		t.Errorf("fetch --server of a genuine checkpoint: %v", err)
	}
	// ... while the service's own trail verifies with its audit key.
	srv.Export(ctx)
	out, _, err = runCmd(t, as("audit", "query", "--actor", "cert:alice", "--action", "fetched", "-o", "json")...)
	if err != nil || !strings.Contains(out, f.manifests[0].Objects().Ciphertext) {
		t.Errorf("audit query --server with the service's key as an audit key: %v\n%.500s", err, out)
	}

	// Direct mode, signing.auditKeys in the config.
	direct := filepath.Join(dir, "direct.yaml")
	os.WriteFile(direct, append(base, fmt.Sprintf("  auditKeys: [%s]\n", svcPub)...), 0o600)
	if _, _, err := runCmd(t, "audit", "query", "--from-store", "--config", direct, "--action", "fetched"); err != nil {
		t.Errorf("audit query --from-store with signing.auditKeys: %v", err)
	}
	_, _, err = runCmd(t, "fetch", forged.Object, "--config", direct, "-i", f.identity, "-o", outFile)
	if exitCode(err) != exitVerifyFail {
		t.Errorf("fetch --config of the forgery with the service's key in signing.auditKeys: exit %d (%v), want 3", exitCode(err), err)
	}
}
