package signing

import (
	"context"
	"os/exec"
	"syscall"
)

// helperSupported: on Linux the helper is this very binary, re-executed
// through /proc/self/exe.
const helperSupported = true

// helperCommand runs the helper from /proc/self/exe, the file the kernel
// is running now: not a path that an upgrade (or an attacker with write
// access to the directory) could have replaced since start.
func helperCommand(ctx context.Context) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "/proc/self/exe", helperArg)
	// The helper must not outlive a daemon that dies while it runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// hardenHelper runs first in the helper: it will hold the password and the
// decrypted key, so it must neither dump core nor let another process of
// the same user attach to it (PR_SET_DUMPABLE 0 does both).
func hardenHelper() {
	const prSetDumpable = 4
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetDumpable, 0, 0)
}
