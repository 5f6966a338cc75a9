package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/daemon"
)

// daemonOptions are the flags of `ckvault daemon`.
type daemonOptions struct {
	config   string
	logLevel string
}

func (o *daemonOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.config, "config", defaultConfigPath, "configuration file (YAML; see deploy/ckvault.example.yaml)")
	cmd.Flags().StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

func newDaemonCommand() *cobra.Command {
	var o daemonOptions
	cmd := &cobra.Command{
		Use:   "daemon --config FILE",
		Short: "Run the node daemon: vault every new checkpoint archive, then shred it",
		Long: `daemon watches the checkpoints directory and, for every finished archive:

  1. admits it only when no process holds it open for writing (a kernel read
     lease), it is a regular, singly-linked file owned as daemon.owner says,
     and it was not replaced since the directory listing;
  2. reads it exactly once: SHA-256 of the plaintext, age encryption to the
     recipients of its namespace, SHA-256 of the ciphertext and the upload
     all happen on one stream — nothing is written to local disk;
  3. checks it is a complete checkpoint (tar end marker, checkpoint/,
     config.dump, spec.dump) and that it did not change while read;
  4. signs and uploads its manifest, proves every object in the store, and
     makes the audit record of that proof durable;
  5. only then overwrites and deletes the local copy (unless <archive>.keep
     pins it).

Files that fail are left in place and audited once. Progress survives
crashes (state.db in stateDir); a restart resumes every archive. SIGTERM
drains the archives in flight, then stops.

Logs are JSON on stderr. /metrics, /healthz and /readyz listen on
daemon.listen; the root-only socket stateDir/ckvault.sock serves
"ckvault audit query|verify" and /v1/status.`,
		Example: `  ckvault daemon --config /etc/ckvault/ckvault.yaml

  # try it locally with a file store and fresh keys
  ckvault dev`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.config == "" {
				return usageError{"daemon: --config is required (the YAML file; see deploy/ckvault.example.yaml, or run ckvault dev)"}
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
				return usageError{fmt.Sprintf("daemon: --log-level %q: use debug, info, warn or error", o.logLevel)}
			}
			// slog's JSON escapes C0, U+2028 and U+2029 but not C1 or DEL,
			// which archive and file names may carry: termsafe.Writer does.
			log := slog.New(slog.NewJSONHandler(termsafe.Writer(cmd.ErrOrStderr()), &slog.HandlerOptions{Level: level}))
			return runDaemon(cmd, o.config, log)
		},
	}
	o.addFlags(cmd)
	return cmd
}

// runDaemon loads the configuration and runs the daemon until the command's
// context is cancelled (SIGTERM, SIGINT). A clean stop is not an error.
func runDaemon(cmd *cobra.Command, configPath string, log *slog.Logger) error {
	cfg, err := policy.Load(configPath)
	if err != nil {
		return err
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(daemon.DefaultMemoryLimit)
	}
	ctx := cmd.Context()
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: log, ConfigPath: configPath, Version: version})
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if err := d.Run(ctx); err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "ckvault: daemon stopped")
	}
	return nil
}
