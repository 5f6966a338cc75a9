package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDevDemo runs `ckvault dev --demo` end to end, twice on the same
// directory (the second run reuses the keys and config and finds the first
// run's checkpoint still listed), and checks the journey's landmarks.
func TestDevDemo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev")
	for run := 1; run <= 2; run++ {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := runDevDemo(ctx, &out, &errb, dir)
		cancel()
		if err != nil {
			t.Fatalf("run %d: %v\nstdout:\n%s\nstderr:\n%s", run, err, out.String(), errb.String())
		}
		for _, want := range []string{
			"the local copy is gone",
			"ok  manifest signature",
			"ok  ciphertext digest",
			"byte-identical to the original",
			"Verified:      yes",
			"Engine:        cri-o",
			" proven ", " shredded ", " fetched ",
			"byte-identical, checked here against",
			"(nothing: a listing holds only what its caller may see)",
			"403 cert:demo-auditor may not fetch in namespace demo",
			"cert:demo-responder  fetched (intent)",
			"cert:demo-auditor    denied",
			"audit trail verifies",
		} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, out.String())
			}
		}
		// Responder accesses carry the checkpoint's namespace/pod/container,
		// so auditors find them with --namespace/--pod.
		if !regexp.MustCompile(`fetched\s+ok\s+demo/web-7d4b9c-x2k8p/web\s`).MatchString(out.String()) {
			t.Errorf("run %d: the fetch record lacks namespace/pod/container:\n%s", run, out.String())
		}
		entries, err := os.ReadDir(filepath.Join(dir, devCheckpts))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 {
			t.Errorf("run %d: checkpoints dir not empty after the demo: %v", run, entries)
		}
		// The kubelet names archives to the second; make the second run's
		// archive a new name.
		time.Sleep(1100 * time.Millisecond)
	}
}
