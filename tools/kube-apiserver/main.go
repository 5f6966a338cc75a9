// Command kube-apiserver is the upstream Kubernetes API server, built from
// k8s.io/kubernetes as a module of its own so that the ckvault product never
// depends on k8s.io/kubernetes. Tests start it (with etcd) through
// internal/testkube; scripts/install-test-tools.sh builds it into the tools
// cache. See ../../docs or ../shared/k8s-test-apiserver.md for why the staging
// modules are replaced in go.mod.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
