package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/audit/auditsock"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Query and verify the tamper-evident audit trail",
		Long: `The audit trail records every step the daemon takes with every checkpoint and
every access to the vault, allowed or denied, in a hash-chained log whose head
is signed with the node's signing key.

While the daemon runs it holds the log; these commands then ask it through its
local socket (<stateDir>/ckvault.sock, root only). Otherwise they open the log
read-only. With --from-store they read the segments every node exported to the
object store instead: the whole cluster's trail, verified end to end.`,
	}
	cmd.AddCommand(newAuditQueryCommand(), newAuditVerifyCommand())
	return cmd
}

// auditOptions are the flags both audit subcommands share.
type auditOptions struct {
	config    string
	fromStore bool
	output    string
}

func (o *auditOptions) addFlags(cmd *cobra.Command, formats string) {
	cmd.Flags().StringVar(&o.config, "config", defaultConfigPath, "configuration file")
	cmd.Flags().BoolVar(&o.fromStore, "from-store", false, "read the segments every node exported to the store instead of this node's log")
	cmd.Flags().StringVarP(&o.output, "output", "o", "table", "output format: "+formats)
}

type auditQueryOptions struct {
	auditOptions
	since, until                                    string
	action, namespace, pod, actor, subject, outcome string
	limit                                           int
	newest                                          bool
}

func newAuditQueryCommand() *cobra.Command {
	var o auditQueryOptions
	cmd := &cobra.Command{
		Use:   "query --config F [filters]",
		Short: "Show audit records matching filters",
		Long: `query prints the audit records that match every given filter, oldest first
(--newest for the reverse). --since and --until take a duration back from now
(24h, 90m) or an RFC 3339 time (2026-03-13T21:43:06Z); --since is inclusive,
--until exclusive.

Output: a table, a JSON array (-o json) or one JSON object per line (-o jsonl);
JSON records carry seq, time, node, actor, action, subject, namespace, pod,
container, outcome, detail, prev and hash.

With --from-store (and through --server) only records under a head signed by
a trusted key are printed; if any exported segment does not verify, what did
not is named on stderr and the exit status is 3.`,
		Example: `  ckvault audit query --config /etc/ckvault/ckvault.yaml --since 24h --action fetched
  ckvault audit query --config c.yaml --namespace payments --outcome denied -o json
  ckvault audit query --config c.yaml --from-store --pod api-7c9f --since 2026-03-01T00:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context(), cmd.OutOrStdout()) },
	}
	o.addFlags(cmd, "table, json or jsonl")
	f := cmd.Flags()
	f.StringVar(&o.since, "since", "", "only records at or after this time (duration back from now, or RFC 3339)")
	f.StringVar(&o.until, "until", "", "only records before this time (duration back from now, or RFC 3339)")
	f.StringVar(&o.action, "action", "", "only this action (e.g. uploaded, shredded, fetched, denied)")
	f.StringVar(&o.namespace, "namespace", "", "only this namespace")
	f.StringVar(&o.pod, "pod", "", "only this pod")
	f.StringVar(&o.actor, "actor", "", `only this actor (e.g. daemon, uid:0)`)
	f.StringVar(&o.subject, "subject", "", "only this subject (archive path, object key or vault id)")
	f.StringVar(&o.outcome, "outcome", "", "only this outcome: ok, denied or error")
	f.IntVar(&o.limit, "limit", 1000, "at most this many records (0: all)")
	f.BoolVar(&o.newest, "newest", false, "newest records first")
	return cmd
}

func (o *auditQueryOptions) filter(now time.Time) (audit.Filter, error) {
	var f audit.Filter
	var err error
	if f.Since, err = parseWhen("--since", o.since, now); err != nil {
		return f, err
	}
	if f.Until, err = parseWhen("--until", o.until, now); err != nil {
		return f, err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, usageError{"--since must be before --until"}
	}
	switch audit.Outcome(o.outcome) {
	case "", audit.OK, audit.Denied, audit.Error:
	default:
		return f, usageError{fmt.Sprintf("--outcome %q: want ok, denied or error", o.outcome)}
	}
	if o.limit < 0 {
		return f, usageError{"--limit must not be negative (0 means all)"}
	}
	f.Action, f.Namespace, f.Pod, f.Actor, f.Subject = o.action, o.namespace, o.pod, o.actor, o.subject
	f.Outcome, f.Newest = audit.Outcome(o.outcome), o.newest
	return f, nil
}

// parseWhen reads a duration back from now ("24h") or an RFC 3339 time.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, usageError{fmt.Sprintf("%s %q: give a positive duration back from now", flag, s)}
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, usageError{fmt.Sprintf("%s %q: want a duration like 24h or 90m, or an RFC 3339 time like 2026-03-13T21:43:06Z", flag, s)}
}

func checkOutput(o string, allowed ...string) error {
	for _, a := range allowed {
		if o == a {
			return nil
		}
	}
	return usageError{fmt.Sprintf("-o %q: want one of %s", o, strings.Join(allowed, ", "))}
}

func (o *auditQueryOptions) run(ctx context.Context, w io.Writer) error {
	if err := checkOutput(o.output, "table", "json", "jsonl"); err != nil {
		return err
	}
	f, err := o.filter(time.Now())
	if err != nil {
		return err
	}
	remoteTrail, err := clientAuditTrail(ctx, o.config)
	if err != nil {
		return err
	}
	var cfg *policy.Config
	if remoteTrail == nil {
		if cfg, err = policy.Load(o.config); err != nil {
			return err
		}
	}
	var page func(audit.Filter) (audit.Page, error)
	var storeTrail *audit.StoreTrail // the exported trail, when that is what is read
	if remoteTrail != nil {
		storeTrail = remoteTrail
	} else if o.fromStore {
		if storeTrail, err = readStoreTrail(ctx, cfg); err != nil {
			return err
		}
	}
	if storeTrail != nil {
		page = storeTrail.Query
	} else {
		src, closeFn, err := openNodeLog(ctx, cfg)
		if err != nil {
			return err
		}
		defer closeFn()
		page = func(f audit.Filter) (audit.Page, error) { return src.Query(ctx, f) }
	}
	var recs []audit.Record
	for {
		f.Limit = audit.MaxLimit
		if o.limit > 0 {
			f.Limit = min(o.limit-len(recs), audit.MaxLimit)
		}
		p, err := page(f)
		if err != nil {
			return err
		}
		recs = append(recs, p.Records...)
		if p.Next == "" || (o.limit > 0 && len(recs) >= o.limit) {
			break
		}
		f.Cursor = p.Next
	}
	if err := printRecords(w, o.output, recs); err != nil {
		return err
	}
	// Only records under a verified head were printed; anything else the
	// store holds is named here, and the exit status says so.
	if storeTrail != nil {
		if f, bad := storeTrail.Report.FirstBad(); bad {
			return fmt.Errorf("%w: the exported trail: %s (%d findings; records that did not verify are not shown; run `ckvault audit verify --from-store`)",
				errVerification, termsafe.String(fmt.Sprint(f)), len(storeTrail.Report.Findings))
		}
	}
	return nil
}

func printRecords(w io.Writer, format string, recs []audit.Record) error {
	switch format {
	case "json":
		enc := json.NewEncoder(termsafe.Writer(w))
		enc.SetIndent("", "  ")
		return enc.Encode(recs)
	case "jsonl":
		enc := json.NewEncoder(termsafe.Writer(w))
		for i := range recs {
			if err := enc.Encode(&recs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tNODE\tACTOR\tACTION\tOUTCOME\tNAMESPACE/POD/CONTAINER\tSUBJECT")
	for _, r := range recs {
		where := strings.Trim(r.Namespace+"/"+r.Pod+"/"+r.Container, "/")
		// Log.Do writes an intent and then a result: say which is which.
		action := r.Action
		if r.Detail["phase"] == "intent" {
			action += " (intent)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Format(time.RFC3339), dash(r.Node), dash(r.Actor),
			dash(action), dash(string(r.Outcome)), dash(where), dash(r.Subject))
	}
	return tw.Flush()
}

func newAuditVerifyCommand() *cobra.Command {
	var o auditOptions
	cmd := &cobra.Command{
		Use:   "verify --config F [--from-store]",
		Short: "Prove the audit trail unaltered, or name the first bad record",
		Long: `verify recomputes the hash chain over every record and checks every signed
head against the trusted keys (signing.publicKey, signing.publicKeys). It
detects a modified, deleted, inserted or reordered record, records dropped
from the end of the log up to the last signed head, and heads signed by any
other key. Records after the last signed head are chained but not yet signed;
verify reports how many, and fails when there are more, or they span longer,
than twice the signing cadence (audit.signEvery, audit.signInterval) allows:
someone rewriting records cannot sign, so must remove every signed head from
the first record changed. docs/AUDIT.md says exactly what is and is not
detected.

With --from-store it verifies the segments every node exported, each against
its own signed head and chained to the node's previous segment.

Exit status 3 when anything is wrong; the first bad sequence number is named.`,
		Example: `  ckvault audit verify --config /etc/ckvault/ckvault.yaml
  ckvault audit verify --config c.yaml --from-store -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.runVerify(cmd.Context(), cmd.OutOrStdout()) },
	}
	o.addFlags(cmd, "table or json")
	return cmd
}

func (o *auditOptions) runVerify(ctx context.Context, w io.Writer) error {
	if err := checkOutput(o.output, "table", "json"); err != nil {
		return err
	}
	remoteTrail, err := clientAuditTrail(ctx, o.config)
	if err != nil {
		return err
	}
	var cfg *policy.Config
	if remoteTrail == nil {
		if cfg, err = policy.Load(o.config); err != nil {
			return err
		}
	}
	var rep *audit.Report
	what := "exported audit trail read through the vault service"
	if remoteTrail != nil {
		rep = remoteTrail.Report
	} else if what = "audit log of node " + cfg.Node; o.fromStore {
		trail, err := readStoreTrail(ctx, cfg)
		if err != nil {
			return err
		}
		rep, what = trail.Report, "exported audit trail in the store"
	} else {
		src, closeFn, err := openNodeLog(ctx, cfg)
		if err != nil {
			return err
		}
		defer closeFn()
		if rep, err = src.Verify(ctx); err != nil {
			return err
		}
	}
	if o.output == "json" {
		enc := json.NewEncoder(termsafe.Writer(w))
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		for _, f := range rep.Findings {
			fmt.Fprintf(w, "BAD %s\n", termsafe.String(fmt.Sprint(f)))
		}
		signers := "none"
		if len(rep.Signers) > 0 {
			signers = strings.Join(rep.Signers, ", ")
		}
		fmt.Fprintf(w, "%s: %d records, %d signed heads (keys: %s), %d records after the last signed head\n",
			what, rep.Records, rep.Heads, termsafe.String(signers), rep.Unsigned)
	}
	if f, bad := rep.FirstBad(); bad {
		return fmt.Errorf("%w: %s: first bad record: %s (%d findings); treat everything from there on as untrusted", errVerification, what, f, len(rep.Findings))
	}
	return nil
}

// nodeLog is this node's log, through the daemon or opened read-only.
type nodeLog interface {
	Query(ctx context.Context, f audit.Filter) (audit.Page, error)
	Verify(ctx context.Context) (*audit.Report, error)
}

type socketLog struct{ *auditsock.Client }

type localLog struct {
	l *audit.Log
	v audit.HeadVerifier
}

func (s localLog) Query(ctx context.Context, f audit.Filter) (audit.Page, error) {
	return s.l.Query(ctx, f)
}
func (s localLog) Verify(ctx context.Context) (*audit.Report, error) { return s.l.Verify(ctx, s.v) }

// openNodeLog asks the running daemon, or opens the database read-only
// when none runs.
func openNodeLog(ctx context.Context, cfg *policy.Config) (nodeLog, func(), error) {
	sock := filepath.Join(cfg.StateDir, auditsock.SocketName)
	c := auditsock.Dial(sock)
	if _, err := c.Query(ctx, audit.Filter{Limit: 1}); err == nil {
		return socketLog{c}, func() {}, nil
	} else if !errors.Is(err, auditsock.ErrNoDaemon) {
		return nil, nil, err
	}
	l, err := audit.OpenReadOnlyOptions(audit.Path(cfg.StateDir), logOptions(cfg))
	if err != nil {
		if errors.Is(err, audit.ErrLocked) {
			return nil, nil, fmt.Errorf("%w; but %s does not answer: is the daemon hung? (check `systemctl status ckvault` or the pod)", err, sock)
		}
		return nil, nil, err
	}
	var v audit.HeadVerifier
	if tk, err := auditTrustedKeys(cfg); err == nil {
		v = tk.DER()
	} else {
		v = missingVerifier{err}
	}
	return localLog{l, v}, func() { l.Close() }, nil
}

// missingVerifier defers a trusted-key error to verify: query does not
// need the keys.
type missingVerifier struct{ err error }

func (m missingVerifier) VerifyDigest([32]byte, []byte) (string, error) { return "", m.err }

// trustedKeys are the keys trusted to sign manifests (and, since nodes
// sign their audit heads with the same key, audit heads): signing.publicKey
// and signing.publicKeys. Never signing.auditKeys: see auditTrustedKeys.
func trustedKeys(cfg *policy.Config) (*signing.TrustedKeys, error) {
	var paths []string
	if cfg.Signing.PublicKey != "" {
		paths = append(paths, cfg.Signing.PublicKey)
	}
	paths = append(paths, cfg.Signing.PublicKeys...)
	if len(paths) == 0 {
		return nil, errors.New("no trusted signing key: set signing.publicKey in the config")
	}
	return signing.LoadTrustedKeys(paths...)
}

// auditTrustedKeys are the keys trusted to sign audit heads: trustedKeys
// and signing.auditKeys (the vault service's and the retention job's keys,
// which sign audit heads only), plus extra. A key that is only an audit key
// never verifies a manifest, so whoever holds it — a compromised service —
// cannot vouch for a forged checkpoint.
func auditTrustedKeys(cfg *policy.Config, extra ...string) (*signing.TrustedKeys, error) {
	var paths []string
	if cfg.Signing.PublicKey != "" {
		paths = append(paths, cfg.Signing.PublicKey)
	}
	paths = append(paths, cfg.Signing.PublicKeys...)
	paths = append(paths, cfg.Signing.AuditKeys...)
	paths = append(paths, extra...)
	if len(paths) == 0 {
		return nil, errors.New("no trusted key to verify audit heads: set signing.publicKey (and signing.auditKeys for the service's and the retention job's keys) in the config")
	}
	return signing.LoadTrustedKeys(paths...)
}

// loadSigner loads signing.key, with the password from
// signing.passwordFile or else $CKVAULT_SIGNING_PASSWORD.
func loadSigner(ctx context.Context, cfg *policy.Config) (*signing.Signer, error) {
	pw := signing.PasswordFromEnv()
	if cfg.Signing.PasswordFile != "" {
		pw = signing.PasswordFromFile(cfg.Signing.PasswordFile)
	}
	s, err := signing.LoadSigner(ctx, cfg.Signing.Key, pw)
	if err != nil {
		return nil, fmt.Errorf("loading signing key %s: %w", cfg.Signing.Key, err)
	}
	return s, nil
}

// logOptions are the options of this node's audit log from its config:
// its name and signing cadence (Verify holds the unsigned tail to it).
func logOptions(cfg *policy.Config) audit.Options {
	return audit.Options{Node: cfg.Node, SignEvery: cfg.Audit.SignEvery, SignInterval: cfg.Audit.SignEveryInterval()}
}

func readStoreTrail(ctx context.Context, cfg *policy.Config) (*audit.StoreTrail, error) {
	tk, err := auditTrustedKeys(cfg)
	if err != nil {
		return nil, err
	}
	st, err := storeconfig.Open(cfg.Store, slog.Default())
	if err != nil {
		return nil, err
	}
	return audit.ReadStore(ctx, st, tk.DER())
}

// Signed heads carry raw DER signatures: the daemon's *signing.Signer is
// the log's HeadSigner as it is, and every reader here verifies heads with
// TrustedKeys.DER(), as the daemon does.
var (
	_ audit.HeadSigner   = (*signing.Signer)(nil)
	_ audit.HeadVerifier = signing.DERVerifier{}
)
