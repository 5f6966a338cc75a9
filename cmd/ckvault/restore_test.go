package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testregistry"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

// TestRestoreCommand pushes a vaulted checkpoint to a real TLS registry
// with the credentials of a docker config, as a user would, and reads the
// result back with stock crane.
func TestRestoreCommand(t *testing.T) {
	f := newVaultFixture(t)
	reg := testregistry.Start(t, testregistry.Options{User: "ir", Password: "pw"})
	t.Setenv("DOCKER_CONFIG", reg.DockerConfig)
	tmp := t.TempDir()
	ref := reg.Host + "/forensics/api:" + f.id(0)
	stdout, stderr, err := runCmd(t, "restore", f.id(0), "--config", f.config, "-i", f.identity,
		"--image", ref, "--registry-ca", reg.CAFile, "--tmp-dir", tmp, "-o", "json")
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "plaintext") {
		t.Errorf("no plaintext warning on stderr: %q", stderr)
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	m := f.manifests[0]
	if out["id"] != f.id(0) || out["object"] != m.Object || out["namespace"] != m.Namespace || out["container"] != m.Container ||
		out["layerDigest"] != "sha256:"+m.Plaintext.SHA256 || out["registry"] != reg.Host || out["repository"] != "forensics/api" {
		t.Errorf("json output %v", out)
	}
	pinned, _ := out["image"].(string)
	if !strings.HasPrefix(pinned, reg.Host+"/forensics/api@sha256:") {
		t.Errorf("image %q is not pinned by digest", pinned)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("--tmp-dir holds %d entries after restore", len(ents))
	}
	cmd := exec.Command(testtools.Path(t, "crane"), "digest", ref)
	cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile)
	d, err := cmd.Output()
	if err != nil {
		t.Fatalf("crane digest: %v", err)
	}
	if "sha256:"+strings.TrimPrefix(pinned, reg.Host+"/forensics/api@sha256:") != strings.TrimSpace(string(d)) {
		t.Errorf("crane digest %s, restore printed %s", d, pinned)
	}
	// The restore is in the audit trail, with where the image went.
	l, err := audit.Open(audit.Path(f.stateDir), audit.Options{Node: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	page, err := l.Query(t.Context(), audit.Filter{Action: "restored", Limit: 10})
	if err != nil || len(page.Records) != 2 || page.Records[1].Detail["repository"] != "forensics/api" || page.Records[1].Detail["image"] != pinned {
		t.Errorf("restored records: %v %+v", err, page.Records)
	}
}

func TestRestoreCommandUsage(t *testing.T) {
	f := newVaultFixture(t)
	for _, args := range [][]string{
		{"restore", f.id(0), "--config", f.config},
		{"restore", f.id(0), "--config", f.config, "--image", "r.example/x:y", "--oci-layout", t.TempDir()},
		{"restore", f.id(0), "--config", f.config, "--image", "r.example/x@sha256:" + strings.Repeat("0", 64)},
		{"restore", f.id(0), "--config", f.config, "--image", "r.example/x:y", "--platform", "amd64"},
	} {
		_, _, err := runCmd(t, args...)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	// An OCI layout, written without a registry.
	out := filepath.Join(t.TempDir(), "layout")
	stdout, stderr, err := runCmd(t, "restore", f.id(1), "--config", f.config, "-i", f.identity, "--oci-layout", out, "--tag", "evidence")
	if err != nil || !strings.Contains(stdout, "OCI layout "+out) {
		t.Fatalf("restore --oci-layout: %v\n%s%s", err, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "blobs", "sha256", f.manifests[1].Plaintext.SHA256)); err != nil {
		t.Errorf("layout lacks the archive layer: %v", err)
	}
}
