package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
)

// vaultFixture is a config over a file store holding two vaulted
// checkpoints, with the keys to read them.
type vaultFixture struct {
	dir, config, stateDir, identity string
	st                              *filestore.Store
	keys                            *testvault.Keys
	archives                        []string
	manifests                       []*manifest.Manifest
}

func newVaultFixture(t *testing.T) *vaultFixture {
	t.Helper()
	dir := t.TempDir()
	keys, err := testvault.NewKeys(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	f := &vaultFixture{dir: dir, config: filepath.Join(dir, "config.yaml"), stateDir: filepath.Join(dir, "state"),
		identity: filepath.Join(dir, "age.key"), keys: keys}
	storeDir := filepath.Join(dir, "store")
	cfg := fmt.Sprintf(`node: laptop
stateDir: %s
checkpointsDir: %s
store:
  url: file://%s
recipients: [%s]
signing:
  key: %s
  publicKey: %s
`, f.stateDir, filepath.Join(dir, "checkpoints"), storeDir, keys.Recipient, filepath.Join(dir, "signing.key"), filepath.Join(dir, "signing.pub"))
	if err := os.WriteFile(f.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if f.st, err = filestore.New(storeDir); err != nil {
		t.Fatal(err)
	}
	for i, o := range []samplearchive.Options{
		{Engine: samplearchive.CRIO, Namespace: "payments", Pod: "api-0", Container: "server", MemoryBytes: 300 << 10},
		{Engine: samplearchive.Containerd, Namespace: "web", Pod: "front-1", Container: "nginx", CheckpointedAt: samplearchive.DefaultTime.Add(3600e9)},
	} {
		o.Seed = int64(i)
		p, err := samplearchive.WriteDir(t.TempDir(), o)
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := testvault.Put(context.Background(), f.st, keys, p, "node-a")
		if err != nil {
			t.Fatal(err)
		}
		f.archives = append(f.archives, p)
		f.manifests = append(f.manifests, m)
	}
	return f
}

func (f *vaultFixture) id(i int) string {
	b := f.manifests[i].Object
	return b[strings.LastIndexByte(b, '-')+1:]
}

func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCommand()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func TestListCommand(t *testing.T) {
	f := newVaultFixture(t)
	out, _, err := runCmd(t, "list", "--config", f.config, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var ents []map[string]any
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(ents) != 2 {
		t.Fatalf("%d entries, want 2:\n%s", len(ents), out)
	}
	for _, k := range []string{"id", "namespace", "pod", "container", "node", "checkpointed", "object", "size", "sha256"} {
		if _, ok := ents[0][k]; !ok {
			t.Errorf("json entry lacks %q", k)
		}
	}
	// Newest first: the containerd one is an hour later.
	if ents[0]["id"] != f.id(1) || ents[0]["object"] != f.manifests[1].Objects().Ciphertext || ents[0]["sha256"] != f.manifests[1].Ciphertext.SHA256 {
		t.Errorf("first entry %v, want %s", ents[0], f.manifests[1].Object)
	}
	out, _, err = runCmd(t, "list", "--config", f.config, "--namespace", "payments")
	if err != nil || !strings.Contains(out, f.id(0)) || strings.Contains(out, f.id(1)) || !strings.Contains(out, "verified") {
		t.Errorf("list --namespace payments: %v\n%s", err, out)
	}

	// A tampered manifest is listed, marked, and makes the exit status 3.
	mk := f.manifests[0].Objects().Manifest
	b, _ := testvault.GetBytes(context.Background(), f.st, mk)
	testvault.PutBytes(context.Background(), f.st, mk, bytes.Replace(b, []byte("api-0"), []byte("api-9"), 1))
	out, _, err = runCmd(t, "list", "--config", f.config)
	if !errors.Is(err, errVerification) || exitCode(err) != exitVerifyFail || !strings.Contains(out, "UNVERIFIED") || !strings.Contains(out, f.id(0)) {
		t.Errorf("list with a tampered manifest: %v\n%s", err, out)
	}
}

func TestVerifyCommand(t *testing.T) {
	f := newVaultFixture(t)
	out, _, err := runCmd(t, "verify", f.id(0)[:5], "--config", f.config)
	if err != nil || !strings.Contains(out, "ciphertext digest") || !strings.Contains(out, "verified:") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	ck := f.manifests[0].Objects().Ciphertext
	b, _ := testvault.GetBytes(context.Background(), f.st, ck)
	b[len(b)-1] ^= 0x80
	testvault.PutBytes(context.Background(), f.st, ck, b)
	_, _, err = runCmd(t, "verify", f.id(0), "--config", f.config)
	if exitCode(err) != exitVerifyFail || !strings.Contains(err.Error(), "ciphertext digest check failed") {
		t.Errorf("verify of a flipped byte: exit %d, %v", exitCode(err), err)
	}
	if _, _, err = runCmd(t, "verify", "zzzz", "--config", f.config); err == nil || exitCode(err) == exitVerifyFail {
		t.Errorf("verify of an unknown id: %v", err)
	}
}

func TestFetchCommand(t *testing.T) {
	f := newVaultFixture(t)
	outDir := t.TempDir()
	out := filepath.Join(outDir, "a.tar")
	stdout, stderr, err := runCmd(t, "fetch", f.id(1), "--config", f.config, "-i", f.identity, "-o", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if stderr != "" {
		t.Errorf("progress or noise on a non-terminal stderr: %q", stderr)
	}
	want, _ := os.ReadFile(f.archives[1])
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("fetched archive differs from the original")
	}
	if !strings.Contains(stdout, f.manifests[1].Plaintext.SHA256) {
		t.Errorf("summary lacks the digest: %s", stdout)
	}
	// Refusals before any work.
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"-o", out}, exitError}, // exists
		{[]string{"-o", "-"}, exitUsage}, // no --unverified-stream
		{[]string{"-o", out + "2", "--unverified-stream"}, exitUsage},
		{[]string{}, exitUsage}, // no -o
	} {
		args := append([]string{"fetch", f.id(1), "--config", f.config, "-i", f.identity}, tt.args...)
		if _, _, err := runCmd(t, args...); exitCode(err) != tt.code {
			t.Errorf("%v: exit %d (%v), want %d", tt.args, exitCode(err), err, tt.code)
		}
	}
	// -o - with the explicit flag streams to stdout.
	stdout, stderr, err = runCmd(t, "fetch", f.id(0), "--config", f.config, "-i", f.identity, "-o", "-", "--unverified-stream")
	want0, _ := os.ReadFile(f.archives[0])
	if err != nil || stdout != string(want0) || !strings.Contains(stderr, "fetched and verified") {
		t.Errorf("stream: %v, %d bytes (want %d), stderr %q", err, len(stdout), len(want0), stderr)
	}
	// A wrong identity names the recipients.
	other, _ := testvault.NewKeys(t.TempDir(), true)
	otherKey := filepath.Join(t.TempDir(), "other.key")
	os.WriteFile(otherKey, []byte(other.IdentityText+"\n"), 0o600)
	_, _, err = runCmd(t, "fetch", f.id(0), "--config", f.config, "-i", otherKey, "-o", filepath.Join(outDir, "b.tar"))
	if err == nil || !strings.Contains(err.Error(), f.manifests[0].Recipients[0]) {
		t.Errorf("wrong identity: %v", err)
	}
	noDebrisIn(t, outDir, "a.tar")

	// Every read is in the local trail, with the actor.
	l, err := audit.OpenReadOnly(audit.Path(f.stateDir))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	page, err := l.Query(context.Background(), audit.Filter{Action: "fetched", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed int
	for _, r := range page.Records {
		if !strings.HasPrefix(r.Actor, fmt.Sprintf("uid:%d(", os.Getuid())) {
			t.Errorf("actor %q", r.Actor)
		}
		if r.Detail["phase"] == "done" {
			switch r.Outcome {
			case audit.OK:
				ok++
			case audit.Error:
				failed++
			}
		}
	}
	if ok != 2 || failed != 1 {
		t.Errorf("fetch records: %d ok, %d error; want 2 and 1 (the wrong identity)", ok, failed)
	}
}

func noDebrisIn(t *testing.T, dir string, keep ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != len(keep) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s holds %v, want only %v", dir, names, keep)
	}
}

func TestInspectCommand(t *testing.T) {
	f := newVaultFixture(t)
	out, _, err := runCmd(t, "inspect", f.id(0), "--config", f.config, "-i", f.identity)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Verified:", "yes", "payments", "api-0", "server", "cri-o", "registry.example/app:1.0", "300.0 KiB", "spec.dump", "checkpoint/pages-1.img"} {
		if !strings.Contains(out, w) {
			t.Errorf("inspect output lacks %q:\n%s", w, out)
		}
	}
	out, _, err = runCmd(t, "inspect", f.id(1), "--config", f.config, "-i", f.identity, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Verified bool
		Info     struct {
			Engine     string
			RootfsDiff int64 `json:"rootfsDiffBytes"`
			Members    []struct{ Name string }
		}
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || !v.Verified || v.Info.Engine != "containerd" || len(v.Info.Members) == 0 {
		t.Errorf("inspect -o json: %v %+v\n%s", err, v, out)
	}
	// Nothing but the audit database was written by inspect: no plaintext.
	filepath.WalkDir(f.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(d.Name(), "ckvault-fetch") {
			t.Errorf("inspect left %s", p)
		}
		return nil
	})
}
