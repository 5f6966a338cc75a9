package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

type gcOptions struct {
	config           string
	output           string
	dryRun           bool
	bypassGovernance bool
}

func newGCCommand() *cobra.Command {
	var o gcOptions
	cmd := &cobra.Command{
		Use:   "gc --config F [--dry-run]",
		Short: "Apply the retention policy: delete expired checkpoints and abandoned uploads",
		Long: `gc applies the config's retention: section to the vault. Each checkpoint falls
under its most specific policy (containers > pods > namespaces > global); within
a policy the oldest go first until maxCount, maxTotalSize and maxAge all hold.

  pinned      a checkpoint with a legal hold (ckvault pin) counts toward the
              limits but never goes; the next oldest goes instead
  deferred    a due checkpoint still under Object Lock retention goes in a
              later run, once the retention has ended (governance retention
              is bypassed only with --bypass-governance, compliance never)
  orphans     objects without a manifest (abandoned uploads) go once older
              than retention.orphanGrace
  unverified  a manifest that does not verify is never deleted, only reported
              (exit status 3): tampering, or a trusted key missing from
              signing.publicKeys. Objects that end like a checkpoint's but
              are not under a checkpoint's key are not the vault's: reported
              the same way, never deleted

Deleting means every version of all six objects, delete markers included, the
manifest first; an intent object (ckvault.gc/intents/) and an audit record precede
each deletion, so an interrupted run is finished by the next one. Exported
audit segments are never touched.

Audit: where the node daemon runs, gc records in its trail. Elsewhere (the
CronJob, an operator's machine) gc keeps its own trail in stateDir, signs its
head with signing.key (signing.passwordFile or $CKVAULT_SIGNING_PASSWORD) and
exports it to the store under audit/<node>/ at the end of every real run, so
"ckvault audit query --from-store" shows its deletions; a real run without a
usable signing key refuses to start, and so does one whose node: already names
another trail in the store (give gc a node name of its own, e.g. ckvault-gc).

--dry-run prints exactly what a real run would delete, and why, and changes
nothing. -o json prints the plan (and, for a real run, the result) as JSON.

With --server URL (see "ckvault list --help") the vault service applies its
own retention: section with the retention credentials it holds; you need
its verb gc, and no store credentials. A service without retention
credentials refuses (501) and says so. The answer waits for the run; if it
takes more than 2 minutes this command gives up waiting, but the run goes on
in the service and its deletions are in the audit trail.`,
		Example: `  ckvault gc --config /etc/ckvault/ckvault.yaml --dry-run
  ckvault gc --config /etc/ckvault/ckvault.yaml -o json
  ckvault gc --server https://vault.example:8443 --ca ca.crt --cert me.crt --key me.key --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", defaultConfigPath, "configuration file (store, trusted keys, retention:)")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.BoolVar(&o.dryRun, "dry-run", false, "print what would be deleted and why; delete nothing")
	f.BoolVar(&o.bypassGovernance, "bypass-governance", false, "also delete versions under GOVERNANCE retention (audited; needs s3:BypassGovernanceRetention); compliance is never bypassed")
	return cmd
}

// openGCStore opens the store for retention: with the retention role's
// credentials when retention.accessKeyFile/secretKeyFile name them, without
// the config's objectLock, so that GC's own intent objects are not locked
// for the retention period, and with the version operations GC needs.
func openGCStore(cfg *policy.Config) (gc.Store, error) {
	sc := cfg.Store
	sc.ObjectLock = nil
	if cfg.Retention.HasCredentials() {
		if strings.HasPrefix(sc.URL, "file://") {
			return nil, fmt.Errorf("retention.accessKeyFile/secretKeyFile are S3 credentials, but store.url %s is a file store; remove them", sc.URL)
		}
		sc.AccessKeyFile, sc.SecretKeyFile = cfg.Retention.AccessKeyFile, cfg.Retention.SecretKeyFile
	}
	st, err := storeconfig.Open(sc, slog.Default())
	if err != nil {
		return nil, err
	}
	vs, ok := st.(gc.Store)
	if !ok {
		return nil, fmt.Errorf("store %s cannot list and delete object versions, which retention needs", st.Describe())
	}
	return vs, nil
}

// gcReport is `gc -o json`, and the service's answer to `gc --server`.
type gcReport = remote.GCReport

func (o *gcOptions) run(ctx context.Context, w io.Writer) (err error) {
	if err := checkOutput(o.output, "table", "json"); err != nil {
		return err
	}
	if rc, ok, err := client.resolve(); err != nil {
		return err
	} else if ok {
		return o.runRemote(ctx, w, rc)
	}
	cfg, err := policy.Load(o.config)
	if err != nil {
		return err
	}
	if cfg.Retention == nil {
		return fmt.Errorf("config %s has no retention: section; add one (deploy/ckvault.example.yaml documents it) to say what gc may delete", o.config)
	}
	tk, err := trustedKeys(cfg)
	if err != nil {
		return fmt.Errorf("%v: gc deletes only checkpoints whose manifest it can verify", err)
	}
	st, err := openGCStore(cfg)
	if err != nil {
		return err
	}
	// A dry run deletes nothing and records nothing; a real run's records
	// must reach the store (openGCAudit).
	var trail gc.Auditor
	var closeTrail func() error
	if o.dryRun {
		trail, closeTrail, err = openResponderAudit(ctx, cfg)
	} else {
		trail, closeTrail, err = openGCAudit(ctx, cfg, tk)
	}
	if err != nil {
		return err
	}
	defer func() {
		if cerr := closeTrail(); cerr != nil && err == nil {
			err = cerr
		} else if cerr != nil {
			slog.Error("gc's audit trail", "err", cerr)
		}
	}()
	opts := gc.Options{Policy: cfg.Retention, Trusted: tk, Audit: trail, Actor: localActor(),
		BypassGovernance: o.bypassGovernance}
	plan, res, runErr := gc.Run(ctx, st, opts, o.dryRun)
	if plan == nil {
		return runErr
	}
	rep := remote.NewGCReport(o.dryRun, plan, res, runErr)
	return o.report(w, &rep, runErr)
}

// runRemote asks the vault service to apply its retention policy (verb
// gc): the service deletes with the retention role's credentials it holds;
// this machine needs none.
func (o *gcOptions) runRemote(ctx context.Context, w io.Writer, rc resolved) error {
	if o.bypassGovernance {
		return usageError{"--bypass-governance cannot be asked of the service: its retention.bypassGovernance decides"}
	}
	rs, err := remote.New(rc.remote)
	if err != nil {
		return err
	}
	rep, err := rs.GC(ctx, o.dryRun)
	if err != nil {
		return err
	}
	var runErr error
	if rep.Error != "" {
		runErr = fmt.Errorf("the service's retention run: %s", rep.Error)
	}
	return o.report(w, rep, runErr)
}

// report prints rep and returns the command's outcome: the run's error,
// failed deletions, or unverified manifests (exit status 3).
func (o *gcOptions) report(w io.Writer, rep *gcReport, runErr error) error {
	plan := rep.Plan
	if o.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := printGC(w, rep); err != nil {
		return err
	}
	switch {
	case runErr != nil:
		return runErr
	case len(rep.Failed) > 0:
		return fmt.Errorf("%d of %d deletions failed (first: %s: %s); an intent is left for each, and the next run finishes them", len(rep.Failed), len(plan.Delete), rep.Failed[0].Base, rep.Failed[0].Error)
	case len(plan.Unverified) > 0:
		return fmt.Errorf("%w: %d objects have a manifest (or GC intent) that does not verify, or are not the vault's; gc kept them: see each UNVERIFIED line, check checkpoints with `ckvault verify`, and that signing.publicKeys lists every key that ever signed", errVerification, len(plan.Unverified))
	}
	return nil
}

// openGCAudit opens where a real gc run records its deletions. Where the
// node daemon runs, its trail, which the daemon signs and exports.
// Elsewhere — the CronJob of deploy/kubernetes/components/gc, an operator's
// machine — gc's own trail in stateDir, under node: cfg.Node: its head is
// signed with signing.key and the trail exported to the store when the
// returned close runs, with audit.Log.Export as the daemon and the service
// export theirs, so that `ckvault audit query|verify --from-store` show
// every deletion (with its policy), orphan removal and governance bypass
// after the pod is gone. Export is resumable: segments a failed export
// left behind go with the next run.
//
// Without a usable signing key a real run refuses before deleting
// anything: records that could never be exported would die with the pod.
// close returns an export failure as an error (gc then exits non-zero; the
// records stay in stateDir for the next run).
func openGCAudit(ctx context.Context, cfg *policy.Config, tk *signing.TrustedKeys) (gc.Auditor, func() error, error) {
	a, local, closeFn, err := openAuditTrail(ctx, cfg, func() (audit.Options, error) {
		signer, err := loadSigner(ctx, cfg)
		if err != nil {
			return audit.Options{}, fmt.Errorf("%w; no node daemon answers here, so gc signs its own audit trail's head with this key and exports the trail to the store, so that its deletions outlive this machine or pod: mount signing.key (and signing.passwordFile, or set %s), or run gc where the node daemon runs; nothing was deleted", err, signing.PasswordEnv)
		}
		o := logOptions(cfg)
		// GC's own key is an audit key (signing.auditKeys), trusted for
		// its heads, never for the manifests tk verifies.
		atk, err := auditTrustedKeys(cfg)
		if err != nil {
			return audit.Options{}, err
		}
		o.Signer, o.Verifier = signer, atk.DER()
		return o, nil
	})
	if err != nil || local == nil {
		return a, closeFn, err
	}
	xst, err := storeconfig.Open(cfg.Store, slog.Default())
	if err == nil {
		err = checkTrailName(ctx, xst, cfg, local)
	}
	if err != nil {
		local.Close()
		return nil, nil, err
	}
	return a, func() error {
		// The run's own context may be ending (SIGTERM, the Job's
		// deadline); the export still gets its chance.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		xerr := exportTrail(ctx, cfg, local, xst)
		if cerr := local.Close(); cerr != nil {
			return errors.Join(xerr, fmt.Errorf("closing gc's audit trail in %s: %w", cfg.StateDir, cerr))
		}
		return xerr
	}, nil
}

// exportTrail signs l's head and exports its sealed segments to the
// configured store (with the config's Object Lock retention, as the
// daemon's are).
func exportTrail(ctx context.Context, cfg *policy.Config, l *audit.Log, st store.Store) error {
	if _, err := l.SignHead(ctx); err != nil {
		return fmt.Errorf("signing the head of gc's audit trail in %s: %w; its records are kept there and the next run exports them", cfg.StateDir, err)
	}
	res, err := l.Export(ctx, st, audit.ExportOptions{})
	if err != nil {
		return fmt.Errorf("gc's audit records are not in the store yet: %w; they are kept in %s and the next run exports them (the store identity needs put on audit/%s/*.jsonl, see deploy/bucket-policies/gc.json)", err, cfg.StateDir, cfg.Node)
	}
	if len(res.Keys) > 0 {
		slog.Info("exported gc's audit segments", "count", len(res.Keys), "through", res.Through, "store", st.Describe())
	}
	return nil
}

// checkTrailName refuses, before anything is deleted, to export l as
// cfg.Node when the store already holds a trail of that name that l did
// not write: two trails exporting as one node would interleave two hash
// chains under audit/<node>/, and `audit verify --from-store` would report
// that node's own trail as broken. This happens when gc runs with a copy of
// a node's config (node: node-a) on a machine without that node's daemon,
// or after the CronJob's volume was lost. l wrote the store's trail if the
// store's first record (seq 1) is l's first record.
func checkTrailName(ctx context.Context, st store.Store, cfg *policy.Config, l *audit.Log) error {
	prefix := audit.SegmentPrefix + cfg.Node + "/"
	// The first segment, skipping the checkpoints of a Kubernetes
	// namespace named "audit" whose pod has gc's node name: they share
	// the prefix, and are no trail.
	var seg string
	for after := ""; seg == ""; {
		objs, next, err := st.List(ctx, prefix, after, 100)
		if err != nil {
			return fmt.Errorf("listing %s in %s (gc checks that no other trail exports as node %q): %w; nothing was deleted", prefix, st.Describe(), cfg.Node, err)
		}
		for _, o := range objs {
			if audit.IsSegmentKey(o.Key) {
				seg = o.Key
				break
			}
		}
		if next == "" || len(objs) == 0 {
			break
		}
		after = next
	}
	if seg == "" {
		return nil
	}
	page, err := l.Query(ctx, audit.Filter{Limit: 1})
	if err != nil {
		return err
	}
	var first struct {
		Record *audit.Record `json:"record"`
	}
	o, err := st.Open(ctx, seg)
	if err != nil {
		return fmt.Errorf("reading %s in %s: %w; nothing was deleted", seg, st.Describe(), err)
	}
	derr := json.NewDecoder(io.LimitReader(o, 1<<20)).Decode(&first)
	o.Close()
	if derr == nil && first.Record != nil && first.Record.Seq == 1 && len(page.Records) > 0 &&
		page.Records[0].Seq == 1 && page.Records[0].Hash == first.Record.Hash {
		return nil // the store's trail is this one
	}
	if derr == nil && first.Record != nil && first.Record.Seq != 1 {
		return nil // the store's start is gone; Export's own checks decide
	}
	return fmt.Errorf("the store already holds an audit trail of node %q (%s) that gc's trail in %s did not write; gc exports its records under the config's node:, so give gc a node name of its own (as the CronJob's node: ckvault-gc), or run it where that node's daemon runs; nothing was deleted", cfg.Node, seg, cfg.StateDir)
}

func printGC(w io.Writer, rep *gcReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	verb := "DELETE"
	if rep.DryRun {
		verb = "WOULD DELETE"
	}
	failed := map[string]bool{}
	for _, f := range rep.Failed {
		failed[f.Base] = true
	}
	fmt.Fprintln(tw, "ACTION\tOBJECT\tPOLICY\tWHY")
	p := rep.Plan
	for _, a := range p.Delete {
		v := verb
		if failed[a.Base] {
			v = "FAILED"
		}
		why := a.Reason
		if a.Bypass != "" {
			why += " (bypassing " + a.Bypass + " retention)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\n", v, termsafe.String(a.Base), termsafe.String(a.Policy), a.Limit, termsafe.String(oneLine(why)))
	}
	for _, l := range []struct {
		what string
		hs   []gc.Held
	}{{"PINNED", p.Pinned}, {"DEFERRED", p.Deferred}, {"ABANDON", p.Abandon}, {"YOUNG ORPHAN", p.YoungOrphans}} {
		for _, h := range l.hs {
			fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\n", l.what, termsafe.String(h.Base), termsafe.String(h.Policy), h.Limit, termsafe.String(oneLine(h.Why)))
		}
	}
	for _, u := range p.Unverified {
		fmt.Fprintf(tw, "UNVERIFIED\t%s\t-\t%s\n", termsafe.String(u.Base), termsafe.String(oneLine(u.Err)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var bytes int64
	for _, a := range p.Delete {
		bytes += a.Size
	}
	_, err := fmt.Fprintf(w, "%d checkpoints verified, %d kept; %s %d (%s); %d pinned, %d deferred, %d young orphans, %d unverified\n",
		p.Checkpoints, p.Kept, map[bool]string{true: "would delete", false: "deleted"}[rep.DryRun], len(p.Delete)-len(rep.Failed),
		humanBytes(bytes), len(p.Pinned), len(p.Deferred), len(p.YoungOrphans), len(p.Unverified))
	return err
}
