package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/daemon"
)

// devOptions are the flags of `ckvault dev`.
type devOptions struct {
	dir  string
	demo bool
}

func (o *devOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.dir, "dir", "./ckvault-dev", "directory for the keys, config, checkpoints, state and file store (created 0700)")
	cmd.Flags().BoolVar(&o.demo, "demo", false, "vault a generated sample checkpoint, fetch and verify it back, show the audit trail, then exit")
}

// The layout of a dev directory.
const (
	devConfigName = "ckvault.yaml"
	// devServeConfigName is the vault service's configuration.
	devServeConfigName = "serve.yaml"
	devKeys            = "keys"
	devCheckpts        = "checkpoints"
	devState           = "state"
	devStore           = "store"
)

func newDevCommand() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev [--dir DIR] [--demo]",
		Short: "Run the daemon on a local setup: fresh keys, a config and a file store under DIR",
		Long: `dev is the embedded default: it creates, under DIR (default ./ckvault-dev),

  keys/         an age key pair and a cosign-compatible signing key pair
                (as ckvault keygen writes them)
  ckvault.yaml  a configuration using them, a file:// store and the
                directories below
  checkpoints/  the directory to drop checkpoint archives into
  store/        the local "object store" the vaulted objects land in
  state/        the daemon's databases and its socket (and the service's)
  serve.yaml    the vault service's configuration (ckvault serve --config):
                mTLS on 127.0.0.1:8443, demo-responder may list and fetch,
                demo-auditor may read the audit trail
  pki/          a CA, the service's certificate and the two clients'

and runs the node daemon in the foreground (Ctrl-C stops it). A second run
reuses everything, so archives vaulted earlier stay listable.

With --demo it instead takes one generated sample checkpoint through the
whole journey and exits: drops it into checkpoints/, waits until it is
vaulted and the local copy shredded, lists, verifies, fetches (byte for
byte against the original) and inspects it; starts the vault service and
lists and fetches it again through it as demo-responder, shows that
demo-auditor is refused, and prints the service's trail; then prints the
node's audit trail and its verification. The daemon's and the service's
logs go to DIR/daemon.log then.`,
		Example: `  ckvault dev --demo
  ckvault dev
  ckvault dev --dir /tmp/ckv`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.demo {
				return runDevDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o.dir)
			}
			h, err := startDev(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o.dir)
			if err != nil {
				return err
			}
			printDevHelp(cmd.OutOrStdout(), h)
			err = <-h.Done
			if err == nil && cmd.Context().Err() != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "ckvault: dev daemon stopped")
			}
			return err
		},
	}
	o.addFlags(cmd)
	return cmd
}

// devHandle is a dev daemon running in this process. It is the hook for
// `ckvault dev --demo`: drop an archive into Config.CheckpointsDir, then
// Daemon.WaitVaulted(ctx, name) returns its progress (Object is the base
// key), and ConfigPath serves the responder commands.
type devHandle struct {
	Dir        string
	ConfigPath string
	Config     *policy.Config
	Daemon     *daemon.Daemon
	// Log is the daemon's logger (the demo's vault service logs there too).
	Log *slog.Logger
	// Done receives Run's result once the context is cancelled and the
	// daemon has drained.
	Done <-chan error
}

// startDev sets DIR up (idempotently) and starts the daemon on it; it
// returns once the daemon watches the directory.
func startDev(ctx context.Context, stdout, stderr io.Writer, dir string) (*devHandle, error) {
	return startDevLogging(ctx, stdout, stderr, stderr, dir)
}

// startDevLogging is startDev with the daemon's JSON log going to logw.
func startDevLogging(ctx context.Context, stdout, stderr, logw io.Writer, dir string) (*devHandle, error) {
	cfgPath, err := setupDev(stdout, stderr, dir)
	if err != nil {
		return nil, err
	}
	cfg, err := policy.Load(cfgPath)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewJSONHandler(termsafe.Writer(logw), &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := daemon.New(ctx, cfg, daemon.Options{Logger: log, ConfigPath: cfgPath, Version: version})
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-done:
		return nil, fmt.Errorf("dev: %w", err)
	}
	return &devHandle{Dir: filepath.Dir(cfgPath), ConfigPath: cfgPath, Config: cfg, Daemon: d, Log: log, Done: done}, nil
}

// setupDev creates (or reuses) the keys, config and directories of a dev
// setup in dir and returns the config's path. Keys are made by the same
// code as `ckvault keygen`; existing keys and config are never overwritten.
func setupDev(stdout, stderr io.Writer, dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("dev: resolving --dir %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("dev: creating %s: %w", abs, err)
	}
	keys := filepath.Join(abs, devKeys)
	present := 0
	names := []string{keygenAgeKey, keygenAgePub, keygenSigningKey, keygenSigningPub}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(keys, n)); err == nil {
			present++
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("dev: checking %s: %w", filepath.Join(keys, n), err)
		}
	}
	switch present {
	case 0:
		if err := runKeygen(stdout, stderr, keygenOptions{dir: keys}); err != nil {
			return "", fmt.Errorf("dev: %w", err)
		}
	case len(names):
		fmt.Fprintf(stdout, "Reusing the keys in %s\n", keys)
	default:
		return "", fmt.Errorf("dev: %s holds only some of %s; move it away so dev can make a fresh set", keys, strings.Join(names, ", "))
	}
	for _, sub := range []string{devCheckpts, devState, devStore} {
		if err := os.MkdirAll(filepath.Join(abs, sub), 0o700); err != nil {
			return "", fmt.Errorf("dev: creating %s: %w", filepath.Join(abs, sub), err)
		}
	}
	if created, err := setupDevPKI(abs); err != nil {
		return "", fmt.Errorf("dev: creating the vault service's certificates in %s: %w", filepath.Join(abs, devPKI), err)
	} else if created {
		fmt.Fprintf(stdout, "Wrote a CA and certificates for the vault service and two clients in %s\n", filepath.Join(abs, devPKI))
	}
	cfgPath := filepath.Join(abs, devConfigName)
	node := ""
	if _, err := os.Lstat(cfgPath); err == nil {
		fmt.Fprintf(stdout, "Reusing the configuration %s\n", cfgPath)
		cfg, err := policy.Load(cfgPath)
		if err != nil {
			return "", err
		}
		node = cfg.Node
	} else {
		host, _ := os.Hostname()
		node = devNodeName(host)
		// Paths are relative to the config file, so the directory can move
		// (except the store URL, which must be absolute).
		y := devCommonConfig(node, abs) + fmt.Sprintf(`identities: [%s/%s]
checkpointsDir: %s
daemon:
  workers: 2
  # dev runs as you, and vaults archives you own.
  owner: "%d"
  listen: 127.0.0.1:0
  rescanInterval: 10s
`, devKeys, keygenAgeKey, devCheckpts, os.Getuid())
		if err := writeNewFile(cfgPath, []byte(y), 0o600); err != nil {
			return "", fmt.Errorf("dev: %w", err)
		}
		fmt.Fprintf(stdout, "Wrote the configuration %s\n", cfgPath)
	}
	servePath := filepath.Join(abs, devServeConfigName)
	if _, err := os.Lstat(servePath); err != nil {
		// The service's own trail needs its own name: two writers must never
		// export under one audit/<node>/.
		y := devCommonConfig(devServiceNode(node), abs) + fmt.Sprintf(`serve:
  listen: 127.0.0.1:8443
  tlsCert: %[1]s/%[2]s.crt
  tlsKey: %[1]s/%[2]s.key
  clientCA: %[1]s/%[3]s.crt      # mTLS: the identity is the certificate's CN
  roles:
    - name: responders
      verbs: [list, get, fetch, restore]
      namespaces: ["*"]
      subjects: [{user: %[4]s}]
    - name: auditors
      verbs: [audit]
      namespaces: ["*"]
      subjects: [{user: %[5]s}]
`, devPKI, devServerName, devCAName, devResponder, devAuditor)
		if err := writeNewFile(servePath, []byte(y), 0o600); err != nil {
			return "", fmt.Errorf("dev: %w", err)
		}
		fmt.Fprintf(stdout, "Wrote the vault service's configuration %s\n", servePath)
	}
	return cfgPath, nil
}

// devCommonConfig is what the daemon's and the service's dev configurations
// share: the store, the keys and the state directory.
func devCommonConfig(node, abs string) string {
	return fmt.Sprintf(`# Written by "ckvault dev". Every key is documented in deploy/ckvault.example.yaml.
node: %s
stateDir: %s
store:
  url: file://%s
recipientsFile: %s/%s
signing:
  key: %s/%s
  publicKey: %s/%s
audit:
  signEvery: 10
  signInterval: 10s
  exportInterval: 1m
`, node, devState, filepath.Join(abs, devStore), devKeys, keygenAgePub, devKeys, keygenSigningKey,
		devKeys, keygenSigningPub)
}

// devServiceNode names the dev vault service's audit trail.
func devServiceNode(node string) string {
	if n := node + "-vault"; k8sname.Node.Valid(n) {
		return n
	}
	return "dev-vault"
}

// devNodeName picks the node name written into a new dev configuration:
// the host name as the kubelet would use it (k8sname.FromHostname), or, if
// that is not a valid node name, the nearest one that is, or "dev-node".
// The result is written into the file for the developer to see; it is the
// daemon's configured name from then on, checked by the same rule.
func devNodeName(host string) string {
	if n := k8sname.FromHostname(host); k8sname.Node.Valid(n) {
		return n
	}
	if n := k8sname.Suggest(k8sname.Node, host); n != "" {
		return n
	}
	return "dev-node"
}

func printDevHelp(w io.Writer, h *devHandle) {
	q := strconv.Quote
	fmt.Fprintf(w, `
checkpoint-vault dev daemon is running (Ctrl-C stops it).

  Drop a checkpoint archive (checkpoint-<pod>_<namespace>-<container>-<time>.tar) into
      %s
  It is sealed, signed and stored under
      %s
  and then shredded. Look at the result with:
      ckvault list --config %s
      ckvault audit query --config %s
      ckvault fetch ID --config %s -o out.tar
  Metrics and health: http://%s/metrics  /healthz  /readyz
  The vault service, in another terminal (clients then need no store access):
      ckvault serve --config %s
      ckvault list --server https://127.0.0.1:8443 --ca %s --cert %s --key %s --trusted-key %s
`, h.Config.CheckpointsDir, strings.TrimPrefix(h.Config.Store.URL, "file://"), q(h.ConfigPath), q(h.ConfigPath), q(h.ConfigPath),
		h.Daemon.MetricsAddr(), q(filepath.Join(h.Dir, devServeConfigName)), q(devPKIFile(h.Dir, devCAName, ".crt")),
		q(devPKIFile(h.Dir, devResponder, ".crt")), q(devPKIFile(h.Dir, devResponder, ".key")), q(h.Config.Signing.PublicKey))
}
