package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/gc"
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

Retention (GC) deletes, which the service's own store credentials cannot:
the service runs it — every retention.interval, and for callers with the
verb gc (ckvault gc --server) — only with the retention role's credentials
in retention.accessKeyFile and retention.secretKeyFile
(deploy/bucket-policies/gc.json). Without them /v1/gc answers 501, and
retention.interval is refused at start: run ckvault gc as a job instead.

Clients: list, verify, fetch, inspect, restore, pin, unpin, gc and audit
query/verify with --server https://HOST:PORT.`,
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
			srv, err := startService(ctx, cfg, rebuild, slog.Default())
			if err != nil {
				return err
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
// trail's heads, and retention where it holds the retention role's
// credentials.
func startService(ctx context.Context, cfg *policy.Config, rebuild bool, log *slog.Logger) (*service.Server, error) {
	tk, err := trustedKeys(cfg)
	if err != nil {
		return nil, fmt.Errorf("%v: the service verifies every manifest it indexes against these keys", err)
	}
	st, err := storeconfig.Open(cfg.Store, log)
	if err != nil {
		return nil, err
	}
	signer, err := loadSigner(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w (it signs the service's audit heads)", err)
	}
	atk, err := auditTrustedKeys(cfg)
	if err != nil {
		return nil, err
	}
	ret, off, err := serveRetention(cfg, tk)
	if err != nil {
		return nil, err
	}
	return service.Start(ctx, cfg, service.Setup{Store: st, Trusted: tk, AuditTrusted: atk, Signer: signer, RebuildIndex: rebuild,
		Retention: ret, RetentionOff: off, Logger: log})
}

// serveRetention is what the service may do about retention: a runner
// whose store uses the retention role's credentials, or nil and why not.
// The service's own store credentials only read (least privilege), so
// without retention credentials it refuses GC rather than try it with
// them.
func serveRetention(cfg *policy.Config, tk *signing.TrustedKeys) (*service.Retention, string, error) {
	r := cfg.Retention
	switch {
	case r == nil:
		return nil, "the service's config has no retention: section, so it has no policy to apply; run `ckvault gc --config F` with the retention job's config", nil
	case !r.HasCredentials():
		return nil, "this service holds no retention credentials (retention.accessKeyFile and retention.secretKeyFile: the retention role of deploy/bucket-policies/gc.json); its own store credentials only read, and never delete. Give it those credentials, or run `ckvault gc` as the retention job", nil
	}
	st, err := openGCStore(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("retention credentials: %w", err)
	}
	return &service.Retention{Store: st, Options: gc.Options{Policy: r, Trusted: tk,
		BypassGovernance: r.BypassGovernance, Logger: slog.Default()}}, "", nil
}
