// Command etcd is the upstream etcd server, built as a module of its own for
// the tests' kube-apiserver (internal/testkube); the product does not depend
// on etcd.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
