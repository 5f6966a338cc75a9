package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testregistry"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/service"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// served is a real `ckvault serve` in front of a vault fixture, and the
// client certificates of the users its roles name.
type served struct {
	f      *vaultFixture
	srv    *service.Server
	dir    string
	ca     *testservers.CA
	certs  map[string][2]string
	config string // the service's config
}

// serveFixture starts the service with the given serve.roles (YAML list
// items, indented four spaces) and extra top-level config, and issues a
// client certificate for each user.
func serveFixture(t *testing.T, f *vaultFixture, roles, extra string, users ...string) *served {
	return serveFixtureWith(t, f, roles, extra, nil, users...)
}

// serveFixtureWith is serveFixture with a hook that completes the Setup
// (nil: retention as `ckvault serve` sets it up, serveRetention).
func serveFixtureWith(t *testing.T, f *vaultFixture, roles, extra string, setup func(*policy.Config, *service.Setup), users ...string) *served {
	t.Helper()
	dir := t.TempDir()
	ca, err := testservers.NewCA(dir, "serve CA")
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := ca.Issue(dir, "serve.crt", "serve.key")
	if err != nil {
		t.Fatal(err)
	}
	s := &served{f: f, dir: dir, ca: ca, certs: map[string][2]string{}}
	for _, u := range users {
		c, k, err := ca.IssueClient(dir, u, u, "")
		if err != nil {
			t.Fatal(err)
		}
		s.certs[u] = [2]string{c, k}
	}
	base, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	s.config = filepath.Join(dir, "serve.yaml")
	yml := string(base) + extra + fmt.Sprintf("serve:\n  listen: 127.0.0.1:0\n  tlsCert: %s\n  tlsKey: %s\n  clientCA: %s\n  roles:\n%s", crt, key, ca.CertFile, roles)
	if err := os.WriteFile(s.config, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := policy.Load(s.config)
	if err != nil {
		t.Fatalf("%v\n%s", err, yml)
	}
	cfg.StateDir = filepath.Join(dir, "serve-state")
	su := service.Setup{Store: f.st, Trusted: f.keys.Trusted, Signer: f.keys.Signer}
	if setup != nil {
		setup(cfg, &su)
	} else if su.Retention, su.RetentionOff, err = serveRetention(cfg, f.keys.Trusted); err != nil {
		t.Fatal(err)
	}
	srv, err := service.Start(context.Background(), cfg, su)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown() })
	s.srv = srv
	os.WriteFile(filepath.Join(dir, "none.yaml"), nil, 0o600)
	return s
}

// as runs a client command as user through the service (no --config: a
// laptop trusts the signing key it was given).
func (s *served) as(t *testing.T, user string, args ...string) (string, string, error) {
	t.Helper()
	c := s.certs[user]
	args = append(args, "--server", "https://"+s.srv.Addr, "--ca", s.ca.CertFile, "--cert", c[0], "--key", c[1],
		"--trusted-key", filepath.Join(s.f.dir, "signing.pub"), "--client-config", filepath.Join(s.dir, "none.yaml"))
	return runCmd(t, args...)
}

// storeAudit is `audit query --from-store` of the fixture's store, as an
// auditor with store access reads it, decoded.
func storeAudit(t *testing.T, f *vaultFixture, args ...string) []map[string]any {
	t.Helper()
	out, stderr, err := runCmd(t, append([]string{"audit", "query", "--config", f.config, "--from-store", "-o", "jsonl"}, args...)...)
	if err != nil {
		t.Fatalf("audit query --from-store: %v\n%s", err, stderr)
	}
	var recs []map[string]any
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r map[string]any
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("audit query output: %v\n%s", err, out)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestRestoreThroughService: `ckvault restore --server` reads the
// ciphertext with the verb restore, pushes to a real TLS registry (read
// back with stock crane), and reports the push to the service, whose
// exported trail shows it to an auditor. A caller with fetch but not
// restore cannot restore, and one with restore but not fetch cannot fetch.
func TestRestoreThroughService(t *testing.T) {
	f := newVaultFixture(t)
	s := serveFixture(t, f, `    - {name: fetchers, verbs: [list, get, fetch], namespaces: ["*"], subjects: [{user: alice}]}
    - {name: restorers, verbs: [list, get, restore], namespaces: ["*"], subjects: [{user: rita}]}
`, "", "alice", "rita")
	reg := testregistry.Start(t, testregistry.Options{User: "ir", Password: "pw"})
	t.Setenv("DOCKER_CONFIG", reg.DockerConfig)
	tmp := t.TempDir()
	ref := reg.Host + "/forensics/api:" + f.id(0)

	stdout, stderr, err := s.as(t, "rita", "restore", f.id(0), "-i", f.identity, "--image", ref, "--registry-ca", reg.CAFile, "--tmp-dir", tmp, "-o", "json")
	if err != nil {
		t.Fatalf("restore --server as rita: %v\n%s", err, stderr)
	}
	var out restoreOutput
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if out.Object != f.manifests[0].Object || out.Registry != reg.Host || out.Repository != "forensics/api" || out.Layer != "sha256:"+f.manifests[0].Plaintext.SHA256 {
		t.Errorf("restore output %+v", out)
	}
	crane := exec.Command(testtools.Path(t, "crane"), "digest", ref)
	crane.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile, "DOCKER_CONFIG="+reg.DockerConfig)
	d, err := crane.Output()
	if err != nil {
		t.Fatalf("crane digest %s: %v", ref, err)
	}
	if strings.TrimSpace(string(d)) != out.Digest {
		t.Errorf("crane digest %s, restore printed %s", d, out.Digest)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("--tmp-dir holds %d entries after restore", len(ents))
	}

	// An OCI layout instead of a push: reported with where it was written.
	layout := filepath.Join(t.TempDir(), "layout")
	if _, stderr, err := s.as(t, "rita", "restore", f.id(0), "-i", f.identity, "--oci-layout", layout, "--tmp-dir", tmp); err != nil {
		t.Fatalf("restore --server --oci-layout: %v\n%s", err, stderr)
	}
	p, err := s.srv.Trail.Query(context.Background(), audit.Filter{Action: service.ActionRestored, Subject: f.manifests[0].Object, Limit: 100})
	if err != nil || len(p.Records) != 4 || p.Records[3].Detail["ociLayout"] != layout || p.Records[3].Detail["imageDigest"] == "" {
		t.Errorf("the layout restore's report (intent and outcome after the push's): %v %+v", err, p.Records)
	}

	// alice may fetch but not restore: refused before anything is pushed.
	ref2 := reg.Host + "/forensics/api:alice"
	_, _, err = s.as(t, "alice", "restore", f.id(0), "-i", f.identity, "--image", ref2, "--registry-ca", reg.CAFile, "--tmp-dir", tmp)
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "restore") {
		t.Errorf("restore --server as alice (fetch only): %v, want a 403 naming restore", err)
	}
	crane = exec.Command(testtools.Path(t, "crane"), "digest", ref2)
	crane.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile, "DOCKER_CONFIG="+reg.DockerConfig)
	if b, err := crane.CombinedOutput(); err == nil {
		t.Errorf("alice's refused restore pushed %s: %s", ref2, b)
	}
	// rita may restore but not fetch.
	_, _, err = s.as(t, "rita", "fetch", f.id(0), "-i", f.identity, "-o", filepath.Join(tmp, "x.tar"))
	if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "fetch") {
		t.Errorf("fetch --server as rita (restore only): %v, want a 403 naming fetch", err)
	}
	if _, err := os.Stat(filepath.Join(tmp, "x.tar")); err == nil {
		t.Error("rita's refused fetch wrote its output")
	}

	// A tampered ciphertext: refused by the client (exit 3) before
	// anything is pushed, and the refusal reported to the service.
	ck := f.manifests[1].Objects().Ciphertext
	ct, _ := testvault.GetBytes(context.Background(), f.st, ck)
	ct[len(ct)/2] ^= 1
	testvault.PutBytes(context.Background(), f.st, ck, ct)
	ref3 := reg.Host + "/forensics/web:tampered"
	_, _, err = s.as(t, "rita", "restore", f.id(1), "-i", f.identity, "--image", ref3, "--registry-ca", reg.CAFile, "--tmp-dir", tmp)
	if exitCode(err) != exitVerifyFail {
		t.Errorf("restore --server of a tampered checkpoint: %v (exit %d), want exit %d", err, exitCode(err), exitVerifyFail)
	}
	crane = exec.Command(testtools.Path(t, "crane"), "digest", ref3)
	crane.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile, "DOCKER_CONFIG="+reg.DockerConfig)
	if b, err := crane.CombinedOutput(); err == nil {
		t.Errorf("a tampered checkpoint was pushed: %s", b)
	}

	// The auditor sees the restore in the store's trail: the read for it,
	// and the push (digest, registry, repository) under rita's name.
	s.srv.Export(context.Background())
	var pushed, reads, denied int
	for _, r := range storeAudit(t, f, "--subject", f.manifests[0].Object) {
		det, _ := r["detail"].(map[string]any)
		switch {
		case r["action"] == service.ActionRestored && r["actor"] == "cert:rita" && det["phase"] == "done" && det["registry"] != nil:
			pushed++
			if det["imageDigest"] != out.Digest || det["registry"] != reg.Host || det["repository"] != "forensics/api" || det["image"] != out.Image {
				t.Errorf("restored record: %v", r)
			}
		case r["action"] == "denied" && r["actor"] == "cert:alice" && det["request"] == "restore":
			denied++
		}
	}
	for _, r := range storeAudit(t, f, "--subject", f.manifests[0].Objects().Ciphertext) {
		det, _ := r["detail"].(map[string]any)
		if r["action"] == service.ActionRestoreFetched && r["actor"] == "cert:rita" && det["phase"] == "done" {
			reads++
		}
		if r["action"] == "denied" && r["actor"] == "cert:alice" && det["request"] == "restore" {
			denied++
		}
	}
	var refused int
	for _, r := range storeAudit(t, f, "--subject", f.manifests[1].Object, "--action", service.ActionRestored) {
		det, _ := r["detail"].(map[string]any)
		if r["outcome"] == "denied" && det["phase"] == "done" && det["reported"] == "denied" && det["check"] != "" {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("store trail: %d reports of the refused restore, want 1", refused)
	}
	// Two restores of checkpoint 0 (push, layout); alice is denied twice:
	// the read, and the report of its failure.
	if pushed != 1 || reads != 2 || denied != 2 {
		t.Errorf("store trail: %d pushes, %d restore-fetched, %d denied records; want 1, 2, 2", pushed, reads, denied)
	}
}

// TestPinThroughService: `ckvault pin/unpin --server` set and lift the
// legal hold through the service with the verb pin; a caller without it is
// refused; the auditor sees the pins in the store's trail.
func TestPinThroughService(t *testing.T) {
	f := newVaultFixture(t)
	s := serveFixture(t, f, `    - {name: pinners, verbs: [pin], namespaces: [payments], subjects: [{user: pete}]}
    - {name: fetchers, verbs: [list, get, fetch], namespaces: ["*"], subjects: [{user: alice}]}
`, "", "pete", "alice")
	base := f.manifests[0].Object
	held := func() bool {
		oi, err := f.st.Stat(context.Background(), f.manifests[0].Objects().Ciphertext)
		if err != nil {
			t.Fatal(err)
		}
		return oi.LegalHold
	}
	out, stderr, err := s.as(t, "pete", "pin", f.id(0))
	if err != nil || strings.TrimSpace(out) != "pinned "+base || !held() {
		t.Fatalf("pin --server: %v %q %s; held %v", err, out, stderr, held())
	}
	if _, _, err := s.as(t, "alice", "unpin", base); err == nil || !strings.Contains(err.Error(), "403") || !held() {
		t.Errorf("unpin --server as alice (no pin verb): %v; held %v", err, held())
	}
	// A short id resolves only among the checkpoints the caller may pin.
	if _, _, err := s.as(t, "alice", "unpin", f.id(0)); err == nil || !strings.Contains(err.Error(), "404") || !held() {
		t.Errorf("unpin --server as alice by short id: %v; held %v", err, held())
	}
	if _, _, err := s.as(t, "pete", "pin", f.manifests[1].Object); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("pin --server of another namespace: %v", err)
	}
	out, _, err = s.as(t, "pete", "unpin", base)
	if err != nil || strings.TrimSpace(out) != "unpinned "+base || held() {
		t.Errorf("unpin --server: %v %q; held %v", err, out, held())
	}
	s.srv.Export(context.Background())
	var pins int
	for _, r := range storeAudit(t, f, "--subject", base, "--actor", "cert:pete") {
		if r["action"] == "pinned" || r["action"] == "unpinned" {
			pins++
		}
	}
	if pins != 4 {
		t.Errorf("store trail: %d pinned/unpinned records of pete, want 4 (intent and outcome of each)", pins)
	}
}

// TestGCThroughServiceCommand: `ckvault gc --server` plans and runs the
// service's retention with the verb gc; the plan is what the run deletes;
// others are refused; a service without retention credentials (as
// `ckvault serve` sets it up) refuses with a message saying so, and will
// not start with retention.interval.
func TestGCThroughServiceCommand(t *testing.T) {
	f := newVaultFixture(t)
	roles := `    - {name: retention, verbs: [gc], namespaces: ["*"], subjects: [{user: gary}]}
    - {name: fetchers, verbs: [list, get, fetch], namespaces: ["*"], subjects: [{user: alice}]}
`
	s := serveFixtureWith(t, f, roles, "retention: {global: {maxCount: 1}}\n", func(cfg *policy.Config, su *service.Setup) {
		// The file store stands in for the retention role's store here;
		// TestGCThroughService (vault/service) runs the real roles on MinIO.
		su.Retention = &service.Retention{Store: f.st, Options: gc.Options{Policy: cfg.Retention, Trusted: f.keys.Trusted}}
	}, "gary", "alice")
	older := 0
	if f.manifests[1].CheckpointedAt.Before(f.manifests[0].CheckpointedAt.Time) {
		older = 1
	}
	gone := func() bool {
		_, err := f.st.Stat(context.Background(), f.manifests[older].Objects().Manifest)
		return errors.Is(err, store.ErrNotExist)
	}
	out, stderr, err := s.as(t, "gary", "gc", "--dry-run")
	if err != nil || !strings.Contains(out, "WOULD DELETE") || !strings.Contains(out, f.manifests[older].Object) || gone() {
		t.Fatalf("gc --server --dry-run: %v\n%s%s", err, out, stderr)
	}
	if _, _, err := s.as(t, "alice", "gc"); err == nil || !strings.Contains(err.Error(), "403") || gone() {
		t.Errorf("gc --server as alice: %v", err)
	}
	out, stderr, err = s.as(t, "gary", "gc", "-o", "json")
	var rep remote.GCReport
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || len(rep.Deleted) != 1 || rep.Deleted[0].Base != f.manifests[older].Object || !gone() {
		t.Fatalf("gc --server: %v\n%s%s", err, out, stderr)
	}

	// As `ckvault serve` sets it up from a config without retention
	// credentials: refused, saying why.
	s2 := serveFixture(t, f, roles, "retention: {global: {maxCount: 1}}\n", "gary")
	if _, _, err := s2.as(t, "gary", "gc", "--dry-run"); err == nil || !strings.Contains(err.Error(), "501") || !strings.Contains(err.Error(), "no retention credentials") {
		t.Errorf("gc --server against a service without retention credentials: %v", err)
	}
	cfg, err := policy.Load(s2.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Retention.Interval = "1h"
	ret, off, err := serveRetention(cfg, f.keys.Trusted)
	if err != nil || ret != nil {
		t.Fatalf("serveRetention without credentials: %v, %v", ret, err)
	}
	cfg.StateDir = t.TempDir()
	if _, err := service.Start(context.Background(), cfg, service.Setup{Store: f.st, Trusted: f.keys.Trusted, Signer: f.keys.Signer, RetentionOff: off}); err == nil || !strings.Contains(err.Error(), "retention.accessKeyFile") {
		t.Errorf("serve with retention.interval and no retention credentials: %v", err)
	}
	// Retention credentials name S3 credentials; a file store has none.
	cfg.Retention.AccessKeyFile, cfg.Retention.SecretKeyFile = "/x/ak", "/x/sk"
	if _, _, err := serveRetention(cfg, f.keys.Trusted); err == nil || !strings.Contains(err.Error(), "file store") {
		t.Errorf("retention credentials with a file store: %v", err)
	}
}
