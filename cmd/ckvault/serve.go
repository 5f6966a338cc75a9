package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/service"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

func newServeCommand() *cobra.Command {
	var configPath string
	var rebuild bool
	cmd := &cobra.Command{
		Use:   "serve --config F",
		Short: "Run the vault service: the one authenticated, authorised, audited reader of the store",
		Long: `serve answers the vault API (docs/API.md) over HTTPS in front of the store.
It holds the store's read credentials and never a decryption identity.

Every caller is authenticated — a client certificate from serve.clientCA
(identity: its SPIFFE URI SAN, else its subject CN; groups: its O), or a
Kubernetes bearer token checked with TokenReview for serve.kubernetes.audience
— and every request authorised per namespace, deny by default: serve.roles, or
SubjectAccessReview on checkpoints/auditevents in group vault.ckvault.dev when
serve.kubernetes.authorize is true. Each request is recorded in the service's
own audit trail (stateDir/serve/audit.db) before the first byte of the answer;
when it cannot be, the answer is 503 and nothing is served. The trail is
signed with signing.key and exported to the store like a node's.

Listings come from an index of verified manifests (stateDir/serve/index.db),
refreshed every serve.indexRefresh from new keys; --rebuild-index rebuilds it
from scratch at start.

Clients: list, verify, fetch, inspect, restore and audit query/verify with
--server https://HOST:PORT.`,
		Example: `  ckvault serve --config /etc/ckvault/serve.yaml
  ckvault list --server https://vault.example:8443 --ca ca.crt --cert me.crt --key me.key --trusted-key signing.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, err := policy.Load(configPath)
			if err != nil {
				return err
			}
			if cfg.Serve == nil {
				return fmt.Errorf("config %s has no serve: section; deploy/ckvault.example.yaml documents it", configPath)
			}
			srv, tk, err := startService(ctx, cfg, rebuild, slog.Default())
			if err != nil {
				return err
			}
			if r := cfg.Retention; r != nil && r.IntervalDuration() > 0 {
				go scheduleGC(ctx, cfg, tk, srv.Trail, r.IntervalDuration(), slog.Default())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ckvault serve: listening on https://%s (%d checkpoints indexed)\n", srv.Addr, srv.Index.Len())
			return srv.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", defaultConfigPath, "configuration file with a serve: section")
	cmd.Flags().BoolVar(&rebuild, "rebuild-index", false, "rebuild the index from the store at start")
	return cmd
}

// startService starts the vault service cfg describes: the store, the
// trusted keys its index verifies manifests with, the key that signs its
// trail's heads.
func startService(ctx context.Context, cfg *policy.Config, rebuild bool, log *slog.Logger) (*service.Server, *signing.TrustedKeys, error) {
	tk, err := trustedKeys(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%v: the service verifies every manifest it indexes against these keys", err)
	}
	st, err := storeconfig.Open(cfg.Store, log)
	if err != nil {
		return nil, nil, err
	}
	signer, err := loadSigner(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (it signs the service's audit heads)", err)
	}
	srv, err := service.Start(ctx, cfg, service.Setup{Store: st, Trusted: tk, Signer: signer, RebuildIndex: rebuild, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return srv, tk, nil
}
