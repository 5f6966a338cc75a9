// Command ckvault is checkpoint-vault: it turns every Kubernetes container
// checkpoint archive on a node into an encrypted, signed, audited object in
// off-node storage, and gives responders and auditors the tools to get it
// back and to prove what happened to it.
//
// # Commands
//
// The node daemon (`ckvault daemon`) and its embedded default (`ckvault
// dev`); key generation (`ckvault keygen`); responder commands (`list`,
// `verify`, `fetch`, `inspect`); auditor commands (`audit query`, `audit
// verify`). Every command has --help.
//
// # Exit status
//
// 0 on success; 1 on any error, printed on stderr (one line per problem,
// control characters escaped) naming the object and the fix; 2 for
// command-line usage errors; 3 when a verification found a problem (a bad
// signature, digest or audit record); 130 when interrupted.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
)

func main() {
	// First of all: started as the signing-key decryption helper, this
	// process decrypts and exits here (see crypto/signing).
	signing.DecryptHelperMain()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprint(os.Stderr, errorLines(err))
	}
	os.Exit(exitCode(err))
}
