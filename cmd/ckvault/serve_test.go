package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/service"
)

// TestClientMode runs the client commands through a real `ckvault serve`
// and checks that output and exit statuses are those of direct mode, that
// the client verifies for itself, and that the service refuses and records
// what the caller may not do.
func TestClientMode(t *testing.T) {
	f := newVaultFixture(t)
	dir := t.TempDir()
	ca, err := testservers.NewCA(dir, "serve CA")
	if err != nil {
		t.Fatal(err)
	}
	crt, key, _ := ca.Issue(dir, "serve.crt", "serve.key")
	aliceCrt, aliceKey, _ := ca.IssueClient(dir, "alice", "alice", "")
	bobCrt, bobKey, _ := ca.IssueClient(dir, "bob", "bob", "")
	audCrt, audKey, _ := ca.IssueClient(dir, "carol", "carol", "", "auditors")
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
    - {name: responders, verbs: [list, get, fetch], namespaces: ["*"], subjects: [{user: alice}]}
    - {name: web, verbs: [list], namespaces: [web], subjects: [{user: bob}]}
    - {name: auditors, verbs: [audit], namespaces: ["*"], subjects: [{group: auditors}]}
`, crt, key, ca.CertFile)...), 0o600)
	cfg, err := policy.Load(serveCfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = filepath.Join(dir, "serve-state")
	srv, err := service.Start(context.Background(), cfg, service.Setup{Store: f.st, Trusted: f.keys.Trusted, Signer: f.keys.Signer})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	server := "https://" + srv.Addr
	pub := filepath.Join(f.dir, "signing.pub")
	as := func(crt, key string, args ...string) []string {
		// No --config: a laptop has none; it trusts the signing key it was given.
		return append(args, "--server", server, "--ca", ca.CertFile, "--cert", crt, "--key", key, "--trusted-key", pub,
			"--client-config", filepath.Join(dir, "none.yaml"))
	}
	os.WriteFile(filepath.Join(dir, "none.yaml"), nil, 0o600)

	direct, _, err := runCmd(t, "list", "--config", f.config, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	remote, _, err := runCmd(t, as(aliceCrt, aliceKey, "list", "-o", "json")...)
	if err != nil {
		t.Fatalf("list --server: %v", err)
	}
	if remote != direct {
		t.Errorf("list through the service differs from direct:\n%s\n---\n%s", remote, direct)
	}
	out, _, err := runCmd(t, as(aliceCrt, aliceKey, "verify", f.id(0))...)
	if err != nil || !strings.Contains(out, "verified:") {
		t.Errorf("verify --server: %v\n%s", err, out)
	}
	outFile := filepath.Join(t.TempDir(), "a.tar")
	if _, _, err := runCmd(t, as(aliceCrt, aliceKey, "fetch", f.id(0), "-i", f.identity, "-o", outFile)...); err != nil {
		t.Errorf("fetch --server: %v", err)
	} else if a, _ := os.ReadFile(outFile); string(a) != string(mustReadFile(t, f.archives[0])) {
		t.Error("fetched archive differs from the original")
	}

	// bob may list web only, and may not verify (get/fetch) anything.
	out, _, err = runCmd(t, as(bobCrt, bobKey, "list")...)
	if err != nil || strings.Contains(out, f.id(0)) || !strings.Contains(out, f.id(1)) {
		t.Errorf("bob's list: %v\n%s", err, out)
	}
	_, _, err = runCmd(t, as(bobCrt, bobKey, "verify", f.id(1))...)
	if err == nil || exitCode(err) != exitError || !strings.Contains(err.Error(), "403") {
		t.Errorf("bob's verify: %v (exit %d), want a 403 refusal, exit 1", err, exitCode(err))
	}

	// A tampered manifest: caught by the client, exit 3, as in direct mode.
	mk := f.manifests[0].Objects().Manifest
	b, _ := testvault.GetBytes(context.Background(), f.st, mk)
	testvault.PutBytes(context.Background(), f.st, mk, []byte(strings.Replace(string(b), "api-0", "api-9", 1)))
	if _, err := srv.Index.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCmd(t, as(aliceCrt, aliceKey, "list")...)
	if exitCode(err) != exitVerifyFail || !strings.Contains(out, "UNVERIFIED") {
		t.Errorf("list --server with a tampered manifest: exit %d, %v\n%s", exitCode(err), err, out)
	}

	// The auditor reads the service's exported trail through the service.
	srv.Export(context.Background())
	out, _, err = runCmd(t, as(audCrt, audKey, "audit", "query", "--actor", "cert:alice", "--action", "fetched", "-o", "json")...)
	if err != nil || !strings.Contains(out, f.manifests[0].Objects().Ciphertext) {
		t.Errorf("audit query --server: %v\n%s", err, out)
	}
	if out, _, err := runCmd(t, as(audCrt, audKey, "audit", "verify")...); err != nil || !strings.Contains(out, "records") {
		t.Errorf("audit verify --server: %v\n%s", err, out)
	}
	// Flags without --server are a usage error.
	if _, _, err := runCmd(t, "list", "--config", f.config, "--cert", aliceCrt); exitCode(err) != exitUsage {
		t.Errorf("--cert without --server: %v", err)
	}
}
