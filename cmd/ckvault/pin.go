package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

func newPinCommand() *cobra.Command   { return pinCommand(true) }
func newUnpinCommand() *cobra.Command { return pinCommand(false) }

func pinCommand(on bool) *cobra.Command {
	var config string
	use, short, long := "pin ID --config F", "Pin a vaulted checkpoint: retention never deletes it",
		`pin places a legal hold on every object of the checkpoint (manifest, ciphertext
and their signatures). A pinned checkpoint counts toward the retention limits but
`+"`ckvault gc`"+` never deletes it, and the store itself refuses to delete its held
versions. A legal hold has no expiry: `+"`ckvault unpin ID`"+` lifts it.

Pins need a store with Object Lock (an S3 bucket created with it) or the file
store. The pin is recorded in the audit trail.

Through the vault service (--server URL, see "ckvault list --help") no store
credentials are needed here: the service sets the hold (PUT /v1/holds/ID)
when you have its verb pin in the checkpoint's namespace, and records it in
its own trail.`
	if !on {
		use, short, long = "unpin ID --config F", "Lift a pin: retention may delete the checkpoint again",
			`unpin lifts the legal hold that `+"`ckvault pin`"+` placed on every object of the
checkpoint. Retention then treats it like any other checkpoint. Recorded in the
audit trail. Through the vault service (--server URL) it needs the verb pin,
as pinning does (DELETE /v1/holds/ID).`
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Example: "  ckvault " + strings.Fields(use)[0] + " 3f9c --config /etc/ckvault/ckvault.yaml\n" +
			"  ckvault " + strings.Fields(use)[0] + " 3f9c --server https://vault.example:8443 --ca ca.crt --cert me.crt --key me.key",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPin(cmd.Context(), cmd.OutOrStdout(), config, args[0], on)
		},
	}
	cmd.Flags().StringVar(&config, "config", defaultConfigPath, "configuration file (the store)")
	return cmd
}

func runPin(ctx context.Context, w io.Writer, config, id string, on bool) error {
	what := "pinned"
	if !on {
		what = "unpinned"
	}
	if rc, ok, err := client.resolve(); err != nil {
		return err
	} else if ok {
		rs, err := remote.New(rc.remote)
		if err != nil {
			return err
		}
		res, err := rs.SetHold(ctx, strings.TrimSpace(id), on)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s %s\n", what, termsafe.String(res.Subject))
		return err
	}
	cfg, err := policy.Load(config)
	if err != nil {
		return err
	}
	st, err := openGCStore(cfg)
	if err != nil {
		return err
	}
	trail, closeTrail, err := openResponderAudit(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeTrail()
	// Resolve looks at object names only: a checkpoint is pinned as it is
	// stored, verified or not (a suspicious one is exactly what to keep).
	r := &responder.Responder{Store: st, Audit: trail, Actor: localActor()}
	base, err := r.Resolve(ctx, id)
	if err != nil {
		return err
	}
	if err := gc.Pin(ctx, st, trail, localActor(), base, on); err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s %s\n", what, termsafe.String(base))
	return err
}
