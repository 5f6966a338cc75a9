package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/internal/termsafe"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

type inspectOptions struct {
	vaultOptions
	identities []string
	unverified bool
}

func newInspectCommand() *cobra.Command {
	var o inspectOptions
	cmd := &cobra.Command{
		Use:   "inspect ID --config F -i IDENTITY",
		Short: "Show what a vaulted checkpoint holds, decrypting it in memory only",
		Long: `inspect decrypts the checkpoint as it streams from the store and reads the
archive in memory — no plaintext byte is written to disk — and shows the
container, pod and namespace, the image, the container engine and runtime, when
the container was created and checkpointed, the size of its memory pages and
of its root filesystem changes, and the archive's members.

The same checks as fetch run (see "ckvault fetch --help"); the output says
that the checkpoint is verified. A checkpoint that fails a check is refused
(exit status 3) unless --unverified, which shows what could be read and marks
it UNVERIFIED — for looking at a damaged object, never for trusting it.

-o json prints the verified flag, the manifest and the archive's own account
of itself. The inspection is recorded in the audit trail.`,
		Example: `  ckvault inspect 3f9c --config /etc/ckvault/ckvault.yaml -i ~/.config/ckvault/age.key
  ckvault inspect 3f9c --config c.yaml -i key.txt -o json | jq .info.members`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), args[0])
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringArrayVarP(&o.identities, "identity", "i", nil, "age identity file (repeatable; default: the config's identities)")
	cmd.Flags().BoolVar(&o.unverified, "unverified", false, "show a checkpoint whose ciphertext or plaintext check failed, marked UNVERIFIED (its manifest must still verify)")
	return cmd
}

func (o *inspectOptions) run(ctx context.Context, w io.Writer, id string) error {
	if err := checkOutput(o.output, "table", "json"); err != nil {
		return err
	}
	r, cfg, closeFn, err := openResponder(ctx, o.config)
	if err != nil {
		return err
	}
	defer closeFn()
	ids, err := loadIdentities(cfg, o.identities)
	if err != nil {
		return err
	}
	ins, err := r.Inspect(ctx, id, responder.InspectOptions{
		FetchOptions:    responder.FetchOptions{Identities: ids},
		AllowUnverified: o.unverified,
	})
	if err != nil {
		return verificationError(err)
	}
	if o.output == "json" {
		problem := ""
		if ins.Problem != nil {
			problem = ins.Problem.Error()
		}
		enc := json.NewEncoder(termsafe.Writer(w))
		enc.SetIndent("", "  ")
		if err := enc.Encode(struct {
			ID       string           `json:"id"`
			Object   string           `json:"object"`
			Verified bool             `json:"verified"`
			Problem  string           `json:"problem,omitempty"`
			Manifest any              `json:"manifest"`
			Info     *checkpoint.Info `json:"info"`
		}{ins.ID, ins.Object, ins.Verified, problem, ins.Manifest, ins.Info}); err != nil {
			return err
		}
	} else {
		printInspection(w, ins)
	}
	if !ins.Verified {
		return fmt.Errorf("%w: %v", errVerification, ins.Problem)
	}
	return nil
}

func printInspection(w io.Writer, ins *responder.Inspection) {
	m := ins.Manifest
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, dash(v)) } // dash escapes v
	when := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	row("ID", ins.ID)
	row("Object", ins.Object)
	if ins.Verified {
		row("Verified", "yes (signature, ciphertext and plaintext digests)")
	} else {
		row("Verified", "NO — UNVERIFIED: "+oneLine(ins.Problem.Error()))
	}
	row("Vaulted", when(m.VaultedAt.Time)+" from node "+m.Node+" ("+m.OriginalName+")")
	info := ins.Info
	if info == nil {
		tw.Flush()
		fmt.Fprintln(w, "(the archive could not be read)")
		return
	}
	row("Namespace", info.Identity.Namespace)
	row("Pod", info.Identity.Pod)
	row("Container", info.Identity.Container)
	row("Container ID", info.ContainerID)
	row("Image", info.Image)
	row("Image ref", info.ImageRef)
	row("Engine", info.Engine)
	row("Runtime", info.Runtime)
	row("Created", when(info.Created))
	row("Checkpointed", when(info.Checkpointed))
	row("Memory pages", humanBytes(info.PagesBytes))
	row("CRIU images", humanBytes(info.CheckpointBytes))
	row("Rootfs diff", humanBytes(info.RootfsDiffBytes))
	row("Archive", fmt.Sprintf("%s, %d members", humanBytes(m.Plaintext.Size), info.MemberCount))
	tw.Flush()
	fmt.Fprintln(w, "Members:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	for _, mem := range info.Members {
		fmt.Fprintf(tw, "  %s\t%s\t  %s\n", termsafe.String(mem.Type), humanBytes(mem.Size), termsafe.String(mem.Name))
	}
	tw.Flush()
	if n := info.MemberCount - len(info.Members); n > 0 {
		fmt.Fprintf(w, "  ... and %d more\n", n)
	}
}
