//go:build !linux

package signing

import (
	"context"
	"os/exec"
)

// helperSupported: elsewhere keys are decrypted in process. Only the Linux
// daemon has a memory bound to keep; the other commands never load a
// signing key.
const helperSupported = false

func helperCommand(ctx context.Context) *exec.Cmd {
	panic("signing: no key-decryption helper on this platform")
}

func hardenHelper() {}
