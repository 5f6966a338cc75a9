package main

import (
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// heavyPackages must not be linked into ckvault: each one's package
// initialisation runs in every ckvault process, the node daemon's included
// (64 MiB budget). client-go's clientsets link its scheme, which registers
// every Kubernetes API group at start (about 12 MiB of resident memory,
// measured with BenchmarkPeakRSS: start 37.8 -> 29.4 MiB); internal/kubeapi
// makes the few calls ckvault needs without them.
var heavyPackages = []string{
	"k8s.io/client-go/kubernetes",
	"k8s.io/client-go/kubernetes/scheme",
}

func TestBinaryLeavesOutHeavyPackages(t *testing.T) {
	out, err := exec.Command(runtime.GOROOT()+"/bin/go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		deps[p] = true
	}
	for _, p := range heavyPackages {
		if deps[p] {
			t.Errorf("ckvault links %s: find the import with \"go list -deps -f '{{.ImportPath}} {{.Imports}}' . | grep %s\" and use internal/kubeapi instead", p, p)
		}
	}
}
