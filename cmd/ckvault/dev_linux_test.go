package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
	"github.com/checkpoint-vault/ckvault/internal/k8sname/k8snametest"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
)

// TestDevRunsAndIsIdempotent starts the dev daemon twice on one directory:
// the second run reuses keys and config, and both vault a dropped archive.
func TestDevRunsAndIsIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	var keyBefore []byte
	for run := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		var out, errb bytes.Buffer
		h, err := startDev(ctx, &out, &errb, dir)
		if err != nil {
			cancel()
			t.Fatalf("run %d: %v\n%s", run, err, errb.String())
		}
		key, err := os.ReadFile(filepath.Join(dir, devKeys, keygenAgeKey))
		if err != nil {
			t.Fatal(err)
		}
		if run == 0 {
			keyBefore = key
		} else if !bytes.Equal(key, keyBefore) {
			t.Fatal("second dev run replaced the keys")
		}
		printDevHelp(&out, h)
		if !bytes.Contains(out.Bytes(), []byte(h.Config.CheckpointsDir)) {
			t.Errorf("instructions do not say where to drop archives:\n%s", out.String())
		}
		path, err := samplearchive.WriteDir(h.Config.CheckpointsDir, samplearchive.Options{Seed: int64(run), Pod: "dev-pod-" + string(rune('a'+run))})
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		p, err := h.Daemon.WaitVaulted(wctx, filepath.Base(path))
		wcancel()
		if err != nil {
			t.Fatalf("run %d: %v\n%s", run, err, errb.String())
		}
		if p.Object == "" {
			t.Fatalf("no object key for %s", path)
		}
		cancel()
		if err := <-h.Done; err != nil {
			t.Fatalf("run %d: daemon: %v", run, err)
		}
	}
}

func TestDevNodeName(t *testing.T) {
	for in, want := range map[string]string{"Node_A.local": "node-a.local", "": "dev-node", "___": "dev-node", "x": "x", "Worker-1": "worker-1"} {
		if got := devNodeName(in); got != want {
			t.Errorf("devNodeName(%q) = %q, want %q", in, got, want)
		}
	}
	// On the shared corpus, the name dev writes is always one the daemon's
	// configuration accepts (the same rule), and a host name that already
	// is a valid node name is kept as it is.
	for _, c := range k8snametest.Corpus {
		got := devNodeName(c.Name)
		if err := k8sname.Node.Check(got); err != nil {
			t.Errorf("devNodeName(%q) = %q: %v", c.Name, got, err)
		}
		if c.Subdomain && got != c.Name {
			t.Errorf("devNodeName(%q) = %q, want the host name unchanged", c.Name, got)
		}
	}
}
