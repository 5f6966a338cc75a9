package main

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// TestDaemonRefusesUnusableNode: a node name the object layout cannot hold
// stops the daemon at start, naming the key and the fix, instead of
// letting it run and reject every archive as not-a-checkpoint.
func TestDaemonRefusesUnusableNode(t *testing.T) {
	f := newVaultFixture(t)
	cfg, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(cfg), "node: laptop", "node: Worker_1", 1)
	if err := os.WriteFile(f.config, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	// Were it accepted, the daemon would run: stop it after a while (a
	// clean stop returns nil, which fails the test).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	root := newRootCommand()
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	root.SetArgs([]string{"daemon", "--config", f.config})
	err = root.ExecuteContext(ctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("daemon started with node: Worker_1 (%v)", err)
	}
	line := errorLines(err)
	for _, want := range []string{f.config + ":1: node:", `invalid node name "Worker_1"`, "e.g. node: worker-1"} {
		if !strings.Contains(line, want) {
			t.Errorf("error %q lacks %q", line, want)
		}
	}
	if exitCode(err) != exitError {
		t.Errorf("exit status %d, want %d", exitCode(err), exitError)
	}
}
