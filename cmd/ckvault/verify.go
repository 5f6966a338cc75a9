package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/internal/termsafe"
)

func newVerifyCommand() *cobra.Command {
	var o vaultOptions
	cmd := &cobra.Command{
		Use:   "verify ID --config F",
		Short: "Check a vaulted checkpoint's signatures and digests without decrypting it",
		Long: `verify checks, in this order, and stops at the first failure, naming it:

  manifest signature    the manifest is signed by a trusted key (signing.publicKey
                        or signing.publicKeys: several, for key rotation)
  manifest              it is a well-formed manifest of a format this build knows
  key binding           it names the object it was found under (not moved,
                        copied or replayed from another checkpoint)
  ciphertext signature  the .sig / .sigstore.json of the ciphertext verify
  ciphertext digest     the ciphertext's size and SHA-256, streamed from the
                        store, are those the manifest records

Nothing is decrypted: no identity is needed. Exit status 3 when a check fails.
The verification is recorded in the audit trail.`,
		Example: `  ckvault verify 3f9c --config /etc/ckvault/ckvault.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), cmd.OutOrStdout(), &o, args[0])
		},
	}
	o.addFlags(cmd)
	return cmd
}

func runVerify(ctx context.Context, w io.Writer, o *vaultOptions, id string) error {
	if err := checkOutput(o.output, "table", "json"); err != nil {
		return err
	}
	r, _, closeFn, err := openResponder(ctx, o.config)
	if err != nil {
		return err
	}
	defer closeFn()
	rep, err := r.Verify(ctx, id)
	if err != nil {
		return verificationError(err)
	}
	m := rep.Manifest
	if o.output == "json" {
		enc := json.NewEncoder(termsafe.Writer(w))
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			ID       string   `json:"id"`
			Object   string   `json:"object"`
			Verified bool     `json:"verified"`
			Checks   []string `json:"checks"`
			SignedBy string   `json:"signedBy"`
			Size     int64    `json:"size"`
			SHA256   string   `json:"sha256"`
		}{rep.ID, m.Objects().Ciphertext, true, rep.Checks, rep.SignedBy, m.Ciphertext.Size, m.Ciphertext.SHA256})
	}
	fmt.Fprintf(w, "%s  %s\n", termsafe.String(rep.ID), termsafe.String(rep.Object))
	for _, c := range rep.Checks {
		fmt.Fprintf(w, "  ok  %s\n", termsafe.String(c))
	}
	fmt.Fprintf(w, "verified: %s, %s, ciphertext sha256 %s, signed by key %s\n",
		termsafe.String(m.Namespace+"/"+m.Pod+"/"+m.Container+" on "+m.Node), humanBytes(m.Ciphertext.Size), m.Ciphertext.SHA256, termsafe.String(rep.SignedBy))
	return nil
}
