//go:build !linux

package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// The node daemon needs Linux (inotify, file leases, O_PATH directory
// handles, SO_PEERCRED); so does `dev`, which runs it. Elsewhere both
// commands exist only to say so: the client commands (list, verify, fetch,
// inspect, restore, audit, gc, pin) work on every platform.

func newDaemonCommand() *cobra.Command { return linuxOnly("daemon", "the node daemon") }

func newDevCommand() *cobra.Command { return linuxOnly("dev", "the embedded development setup") }

func linuxOnly(name, what string) *cobra.Command {
	return &cobra.Command{
		Use:   name,
		Short: what + " (Linux only)",
		Args:  cobra.ArbitraryArgs,
		RunE: func(*cobra.Command, []string) error {
			return fmt.Errorf("ckvault %s runs only on Linux nodes (this is %s/%s); the client commands (list, verify, fetch, inspect, restore, audit) work here", name, runtime.GOOS, runtime.GOARCH)
		},
	}
}
