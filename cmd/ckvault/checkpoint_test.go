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
	k := testkubelet.Start(t, testkubelet.Options{Node: h.Config.Node, CheckpointsDir: h.Config.CheckpointsDir,
		Pods:       map[string][]string{"payments/api-0": {"server"}},
		Tokens:     map[string]testkubelet.User{"tok": {Name: "alice"}},
		Authorizer: testkubelet.Allow{"alice": true}})
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("tok\n"), 0o600); err != nil {
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

	// A refused token is one clear line, and nothing is waited for.
	if err := os.WriteFile(tok, []byte("unknown\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCmd(t, args...)
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "\n") {
		t.Errorf("unknown token: %v", err)
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
