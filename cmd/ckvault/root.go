package main

import (
	"github.com/spf13/cobra"
)

// defaultConfigPath is where every command looks for the configuration
// when --config is not given: where deploy/ installs it.
const defaultConfigPath = "/etc/ckvault/ckvault.yaml"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "ckvault",
		Short: "Encrypt, sign, vault and audit Kubernetes container checkpoints",
		Long: `checkpoint-vault makes every Kubernetes container checkpoint archive safe within
seconds of its creation: it encrypts it with age to the authorised recipients,
signs its digests, uploads it over TLS to object storage, proves the remote
copy complete, records every step in a tamper-evident audit trail and
securely deletes the local copy.

Start with:  ckvault dev --demo`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError{err.Error()}
	})
	root.AddCommand(
		// Each command lives in its own file as newXxxCommand().
		newKeygenCommand(),
		newDaemonCommand(), // Linux only: see node_other.go
		newDevCommand(),
		newAuditCommand(),
		newListCommand(),
		newVerifyCommand(),
		newFetchCommand(),
		newInspectCommand(),
		newGCCommand(),
		newPinCommand(),
		newUnpinCommand(),
		newRestoreCommand(),
		newCheckpointCommand(),
		newServeCommand(),
	)
	addClientFlags(root)
	return root
}
