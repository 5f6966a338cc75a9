package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/audit/auditsock"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// The responder commands (list, verify, fetch, inspect) share how they
// open the vault; it lives here, with the first of them.

// vaultOptions are the flags every responder command has.
type vaultOptions struct {
	config string
	output string
}

func (o *vaultOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.config, "config", defaultConfigPath, "configuration file (the store and the trusted signing keys)")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
}

// openResponder loads the configuration, opens the store, the trusted keys
// and the audit trail (openResponderAudit). close releases the trail; call
// it once.
func openResponder(ctx context.Context, configPath string) (*responder.Responder, *policy.Config, func(), error) {
	if rc, ok, err := client.resolve(); err != nil {
		return nil, nil, nil, err
	} else if ok {
		return openRemoteResponder(configPath, rc)
	}
	cfg, err := policy.Load(configPath)
	if err != nil {
		return nil, nil, nil, err
	}
	tk, err := trustedKeys(cfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%v: responders verify every object against the keys in signing.publicKey and signing.publicKeys", err)
	}
	st, err := storeconfig.Open(cfg.Store, slog.Default())
	if err != nil {
		return nil, nil, nil, err
	}
	trail, closeTrail, err := openResponderAudit(ctx, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	r := &responder.Responder{Store: st, Trusted: tk, Audit: trail, Actor: localActor()}
	return r, cfg, func() {
		if err := closeTrail(); err != nil {
			slog.Warn("closing the audit trail", "err", err)
		}
	}, nil
}

var (
	_ responder.Auditor = (*auditsock.Client)(nil)
	_ responder.Auditor = (*audit.Log)(nil)
)

// openResponderAudit returns where this machine's audit trail takes the
// responder's records. Responder commands are audited on the machine they
// run on: through the daemon's socket when a daemon runs here (it holds the
// trail, and records the caller's kernel-reported uid as the actor), or
// else in the trail itself, opened for writing. There is no third way:
// when neither works the command refuses (audit fails closed) rather than
// read the vault unrecorded.
//
// Without a daemon the trail has no head signer: the signing key is the
// daemon's (often in a KMS, or behind scrypt, whose 64 MiB would dwarf a
// fetch's memory). The records are hash-chained at once, and covered by a
// signed head the next time the daemon signs one on this node.
func openResponderAudit(ctx context.Context, cfg *policy.Config) (responder.Auditor, func() error, error) {
	a, _, closeFn, err := openAuditTrail(ctx, cfg, func() (audit.Options, error) { return logOptions(cfg), nil })
	return a, closeFn, err
}

// openAuditTrail returns the node daemon's trail through its socket when
// the daemon answers (local is nil then: the daemon signs and exports it),
// else this node's trail in stateDir opened with localOpts (local is that
// log). localOpts runs only when the local log is needed, so loading a
// signing key for it costs nothing when the daemon is there.
func openAuditTrail(ctx context.Context, cfg *policy.Config, localOpts func() (audit.Options, error)) (a responder.Auditor, local *audit.Log, closeFn func() error, err error) {
	sock := filepath.Join(cfg.StateDir, auditsock.SocketName)
	c := auditsock.Dial(sock)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = c.Ping(pctx)
	cancel()
	switch {
	case err == nil:
		return c, nil, c.Close, nil
	case errors.Is(err, fs.ErrPermission):
		return nil, nil, nil, fmt.Errorf("%w: the daemon on this node holds the audit trail, and only root (or the daemon's user) may record a responder's access through its socket; run this command as root, or on another machine with its own stateDir", err)
	case !errors.Is(err, auditsock.ErrNoDaemon):
		return nil, nil, nil, fmt.Errorf("%w: every read of the vault is recorded in this node's audit trail, which the daemon holds; check that the daemon is healthy (systemctl status ckvault, or its pod)", err)
	}
	opts, err := localOpts()
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := audit.Open(audit.Path(cfg.StateDir), opts)
	if err == nil {
		return l, l, l.Close, nil
	}
	if errors.Is(err, audit.ErrLocked) {
		return nil, nil, nil, fmt.Errorf("%w, and no daemon answers on %s: another ckvault command may be using it (retry when it ends), or the daemon is starting or hung", err, sock)
	}
	return nil, nil, nil, fmt.Errorf("opening the audit trail in %s: %w; every read of the vault is recorded there, so set stateDir to a directory you may write", cfg.StateDir, err)
}

// localActor names the person running the command: uid, user name and
// host, as the kernel and the system report them.
func localActor() string {
	uid := os.Getuid()
	name := "?"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil {
		host = "?"
	}
	return fmt.Sprintf("uid:%d(%s)@%s", uid, name, host)
}

// verificationError marks a check failure for the exit status table.
func verificationError(err error) error {
	if errors.Is(err, responder.ErrVerification) && !errors.Is(err, errVerification) {
		return fmt.Errorf("%w: %w", errVerification, err)
	}
	return err
}

type listOptions struct {
	vaultOptions
	namespace, pod, container, node string
	since, until                    string
}

func newListCommand() *cobra.Command {
	var o listOptions
	cmd := &cobra.Command{
		Use:   "list --config F [filters]",
		Short: "List vaulted checkpoints, newest first",
		Long: `list shows the vaulted checkpoints in the store, newest first, after verifying
each one's manifest: its signature under a trusted key, its form, and that it
names the object it was found under. Checkpoints whose manifest fails are
listed too, marked UNVERIFIED with the reason, and the command then exits 3.
The ciphertext itself is not read (use verify for that).

The ID column is a short, stable id; any unique prefix of at least 4
characters selects the checkpoint in verify, fetch and inspect.

--since and --until take a duration back from now (24h) or an RFC 3339 time,
and apply to the checkpoint time; --since is inclusive, --until exclusive.

-o json prints an array of objects with id, namespace, pod, container, node,
checkpointed, object (the ciphertext object's key), size and sha256 (of that
object), archiveSize and archiveSha256 (of the decrypted archive), vaulted,
verified and, when not verified, problem.

The listing is recorded in the audit trail.`,
		Example: `  ckvault list --config /etc/ckvault/ckvault.yaml
  ckvault list --config c.yaml --namespace payments --since 24h -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.addFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.namespace, "namespace", "", "only this namespace")
	f.StringVar(&o.pod, "pod", "", "only this pod")
	f.StringVar(&o.container, "container", "", "only this container")
	f.StringVar(&o.node, "node", "", "only checkpoints taken on this node")
	f.StringVar(&o.since, "since", "", "only checkpoints taken at or after this time (duration back from now, or RFC 3339)")
	f.StringVar(&o.until, "until", "", "only checkpoints taken before this time (duration back from now, or RFC 3339)")
	return cmd
}

// listEntry is one line of `list -o json`.
type listEntry struct {
	ID            string    `json:"id"`
	Namespace     string    `json:"namespace"`
	Pod           string    `json:"pod"`
	Container     string    `json:"container"`
	Node          string    `json:"node"`
	Checkpointed  time.Time `json:"checkpointed,omitzero"`
	Object        string    `json:"object"`
	Size          int64     `json:"size"`
	SHA256        string    `json:"sha256"`
	ArchiveSize   int64     `json:"archiveSize"`
	ArchiveSHA256 string    `json:"archiveSha256"`
	Vaulted       time.Time `json:"vaulted,omitzero"`
	Verified      bool      `json:"verified"`
	Problem       string    `json:"problem,omitempty"`
}

func (o *listOptions) run(ctx context.Context, w io.Writer) error {
	if err := checkOutput(o.output, "table", "json"); err != nil {
		return err
	}
	now := time.Now()
	since, err := parseWhen("--since", o.since, now)
	if err != nil {
		return err
	}
	until, err := parseWhen("--until", o.until, now)
	if err != nil {
		return err
	}
	if (o.container != "" || o.pod != "") && o.namespace == "" {
		// Still correct (filtered after listing), just slower: no prefix.
		slog.Debug("listing the whole store: --pod/--container without --namespace")
	}
	r, _, closeFn, err := openResponder(ctx, o.config)
	if err != nil {
		return err
	}
	defer closeFn()
	ents, err := r.List(ctx, responder.ListOptions{
		Namespace: o.namespace, Pod: o.pod, Container: o.container, Node: o.node, Since: since, Until: until,
	})
	if err != nil {
		return err
	}
	out := make([]listEntry, len(ents))
	bad := 0
	for i, e := range ents {
		le := listEntry{ID: e.ID, Namespace: e.Namespace(), Pod: e.Pod(), Container: e.Container(), Node: e.Node(),
			Checkpointed: e.Checkpointed().UTC(), Object: e.Base + ".tar.age"}
		if m := e.Manifest; m != nil {
			le.Object = m.Objects().Ciphertext
			le.Size, le.SHA256 = m.Ciphertext.Size, m.Ciphertext.SHA256
			le.ArchiveSize, le.ArchiveSHA256 = m.Plaintext.Size, m.Plaintext.SHA256
			le.Vaulted, le.Verified = m.VaultedAt.UTC(), true
		} else {
			le.Problem = e.Problem.Error()
			bad++
		}
		out[i] = le
	}
	if o.output == "json" {
		enc := json.NewEncoder(termsafe.Writer(w))
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCHECKPOINTED\tNAMESPACE\tPOD\tCONTAINER\tNODE\tARCHIVE\tSTATUS")
		for _, e := range out {
			status, size := "verified", humanBytes(e.ArchiveSize)
			if !e.Verified {
				status, size = "UNVERIFIED: "+e.Problem, "-"
			}
			when := "-"
			if !e.Checkpointed.IsZero() {
				when = e.Checkpointed.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dash(e.ID), when, dash(e.Namespace), dash(e.Pod), dash(e.Container), dash(e.Node), size, termsafe.String(oneLine(status)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if bad > 0 {
		return fmt.Errorf("%w: %d of %d vaulted checkpoints have a manifest that does not verify (marked UNVERIFIED); do not trust them, and see `ckvault verify ID`", errVerification, bad, len(out))
	}
	return nil
}

// dash is a table cell: "-" for nothing, else s escaped (internal/termsafe),
// since a cell's text may come from an archive, the store or a log.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return termsafe.String(s)
}

// oneLine keeps a message on its line in a table by collapsing white
// space; the result is still to be escaped (termsafe.String) for printing.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// humanBytes formats a size in binary units, as checkpointctl does.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
