package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/internal/testkubelet"
)

// TestCheckpointCommand runs the real daemon (ckvault dev) and a kubelet
// stand-in writing into its checkpoints directory, and asks for a
// checkpoint as a responder would: the printed vault id fetches back.
func TestCheckpointCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var devOut, devErr bytes.Buffer
	h, err := startDev(ctx, &devOut, &devErr, dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, devErr.String())
	}
	defer func() { cancel(); <-h.Done }()
	// The kubelet stand-in authenticates and authorises through a real
	// API server; the responder is a service account allowed only create
	// on nodes/checkpoint, with a token for the API server's audience
	// (what `kubectl create token` gives).
	c := testkube.Shared(t)
	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "responder")
	c.GrantCluster(t, ns+"-checkpoint", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/checkpoint"}, Verbs: []string{"create"}}},
		testkube.SA(ns, "responder"))
	k := testkubelet.Start(t, testkubelet.Options{Node: h.Config.Node, CheckpointsDir: h.Config.CheckpointsDir,
		Pods: map[string][]string{"payments/api-0": {"server"}}, API: c.Client(t)})
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(c.Token(t, ns, "responder", testkube.APIAudience, time.Hour)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // the lock directory
	args := []string{"checkpoint", "payments/api-0/server", "--config", h.ConfigPath, "--kubelet", k.URL, "--node", h.Config.Node,
		"--kubelet-ca", k.CAFile, "--token-file", tok, "--vault-timeout", "2m"}
	stdout, stderr, err := runCmd(t, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("checkpoint: %v\n%s\n%s", err, stderr, devErr.String())
	}
	var out map[string]any
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	for _, key := range []string{"id", "object", "namespace", "pod", "container", "node", "archive", "seconds"} {
		if _, ok := out[key]; !ok {
			t.Errorf("json lacks %q: %s", key, stdout)
		}
	}
	if out["archive"] != k.LastArchive() || out["node"] != h.Config.Node || out["container"] != "server" {
		t.Errorf("output %v, kubelet wrote %s", out, k.LastArchive())
	}
	id, _ := out["id"].(string)
	fetched := filepath.Join(t.TempDir(), "fetched.tar")
	if _, stderr, err := runCmd(t, "fetch", id, "--config", h.ConfigPath, "-o", fetched); err != nil {
		t.Fatalf("fetch %s: %v\n%s", id, err, stderr)
	}

	// A refused token — unknown, or the same account's expired — is one
	// clear line, and nothing is waited for.
	for name, bad := range map[string]string{"unknown": "unknown", "expired": c.ExpiredToken(t, ns, "responder", testkube.APIAudience)} {
		if err := os.WriteFile(tok, []byte(bad+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err = runCmd(t, args...)
		if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s token: %v", name, err)
		}
	}
	// A real token of an account without create on nodes/checkpoint: 403,
	// naming the permission.
	c.ServiceAccount(t, ns, "bystander")
	if err := os.WriteFile(tok, []byte(c.Token(t, ns, "bystander", testkube.APIAudience, time.Hour)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err = runCmd(t, args...); err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "nodes/checkpoint") {
		t.Errorf("token without create on nodes/checkpoint: %v", err)
	}
	// Usage errors.
	for _, a := range [][]string{
		{"checkpoint", "payments/api-0", "--config", h.ConfigPath},
		{"checkpoint", "Payments/api-0/server", "--config", h.ConfigPath},
		{"checkpoint", "payments/api-0/server", "--config", h.ConfigPath, "--cert", "c.pem"},
	} {
		_, _, err := runCmd(t, a...)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("%v: %v, want a usage error", a, err)
		}
	}
}
