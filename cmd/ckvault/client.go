package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/remote"
	"github.com/checkpoint-vault/ckvault/vault/responder"
)

// Client mode: the responder and auditor commands read the vault through
// `ckvault serve` instead of the store (--server, or CKVAULT_SERVER, or the
// client config file). The verification is the same code on the same
// bytes: the service is trusted for availability only.

// clientOptions are the client-mode flags; one command runs per process, so
// one instance serves whichever command was chosen.
type clientOptions struct {
	server, cert, key, ca, token, tokenFile, clientConfig string
	trustedKeys, trustedAuditKeys                         []string
}

var client clientOptions

// clientCommands are the commands that take the client-mode flags.
var clientCommands = map[string]bool{"list": true, "verify": true, "fetch": true, "inspect": true,
	"restore": true, "audit query": true, "audit verify": true, "pin": true, "unpin": true, "gc": true}

// addClientFlags gives every client command the client-mode flags.
func addClientFlags(root *cobra.Command) {
	client = clientOptions{}
	var walk func(c *cobra.Command, prefix string)
	walk = func(c *cobra.Command, prefix string) {
		for _, sub := range c.Commands() {
			name := prefix + sub.Name()
			if clientCommands[name] {
				f := sub.Flags()
				f.StringVar(&client.server, "server", "", "read through the vault service at this URL (https://HOST[:PORT]; env CKVAULT_SERVER)")
				f.StringVar(&client.cert, "cert", "", "client certificate for the service (PEM; env CKVAULT_CERT)")
				f.StringVar(&client.key, "key", "", "its private key (PEM; env CKVAULT_KEY)")
				f.StringVar(&client.ca, "ca", "", "CA bundle the service's certificate must chain to (env CKVAULT_CA)")
				f.StringVar(&client.token, "token", "", "bearer token for the service (prefer --token-file: arguments are visible to other users)")
				f.StringVar(&client.tokenFile, "token-file", "", "file holding a bearer token, re-read at each request (env CKVAULT_TOKEN_FILE)")
				f.StringArrayVar(&client.trustedKeys, "trusted-key", nil, "signing public key to trust (PEM; repeatable; default: the config's signing.publicKey(s))")
				f.StringArrayVar(&client.trustedAuditKeys, "trusted-audit-key", nil, "public key trusted for audit heads only, never manifests: the service's or the retention job's (PEM; repeatable; default: the config's signing.auditKeys)")
				f.StringVar(&client.clientConfig, "client-config", "", "client config file (default $CKVAULT_CLIENT_CONFIG or ~/.config/ckvault/client.yaml)")
			}
			walk(sub, name+" ")
		}
	}
	walk(root, "")
}

// clientFile is the small client configuration file.
type clientFile struct {
	Server      string   `yaml:"server"`
	CA          string   `yaml:"ca"`
	Cert        string   `yaml:"cert"`
	Key         string   `yaml:"key"`
	TokenFile   string   `yaml:"tokenFile"`
	TrustedKeys []string `yaml:"trustedKeys"`
	// TrustedAuditKeys are trusted for audit heads only.
	TrustedAuditKeys []string `yaml:"trustedAuditKeys"`
	Identities       []string `yaml:"identities"`
}

func loadClientFile(path string, explicit bool) (*clientFile, error) {
	var cf clientFile
	b, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return &cf, nil
		}
		return nil, fmt.Errorf("client config %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("client config %s: %w (keys: server, ca, cert, key, tokenFile, trustedKeys, trustedAuditKeys, identities)", path, err)
	}
	dir := filepath.Dir(path)
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&cf.CA)
	abs(&cf.Cert)
	abs(&cf.Key)
	abs(&cf.TokenFile)
	for i := range cf.TrustedKeys {
		abs(&cf.TrustedKeys[i])
	}
	for i := range cf.TrustedAuditKeys {
		abs(&cf.TrustedAuditKeys[i])
	}
	for i := range cf.Identities {
		abs(&cf.Identities[i])
	}
	return &cf, nil
}

// resolved is client mode as flags, environment and the client file give
// it (in that order of precedence).
type resolved struct {
	remote      remote.Config
	trustedKeys []string
	// trustedAuditKeys verify audit heads only.
	trustedAuditKeys []string
	identities       []string
}

// clientMode returns the service to read through, or ok=false for direct
// mode.
func (c *clientOptions) resolve() (r resolved, ok bool, err error) {
	path, explicit := c.clientConfig, c.clientConfig != ""
	if !explicit {
		if path = os.Getenv("CKVAULT_CLIENT_CONFIG"); path != "" {
			explicit = true
		} else if d, err := os.UserConfigDir(); err == nil {
			path = filepath.Join(d, "ckvault", "client.yaml")
		}
	}
	cf := &clientFile{}
	if path != "" {
		if cf, err = loadClientFile(path, explicit); err != nil {
			return r, false, err
		}
	}
	pick := func(flag, env, file string) string {
		if flag != "" {
			return flag
		}
		if v := os.Getenv(env); v != "" {
			return v
		}
		return file
	}
	r.remote = remote.Config{
		Server:    pick(c.server, "CKVAULT_SERVER", cf.Server),
		CAFile:    pick(c.ca, "CKVAULT_CA", cf.CA),
		CertFile:  pick(c.cert, "CKVAULT_CERT", cf.Cert),
		KeyFile:   pick(c.key, "CKVAULT_KEY", cf.Key),
		Token:     c.token,
		TokenFile: pick(c.tokenFile, "CKVAULT_TOKEN_FILE", cf.TokenFile),
	}
	if r.remote.Server == "" {
		if c.cert != "" || c.key != "" || c.token != "" || c.tokenFile != "" || c.ca != "" {
			return r, false, usageError{"--cert, --key, --ca, --token and --token-file are for the vault service: add --server URL (or set CKVAULT_SERVER)"}
		}
		return r, false, nil
	}
	r.trustedKeys = c.trustedKeys
	if len(r.trustedKeys) == 0 {
		r.trustedKeys = cf.TrustedKeys
	}
	r.trustedAuditKeys = c.trustedAuditKeys
	if len(r.trustedAuditKeys) == 0 {
		r.trustedAuditKeys = cf.TrustedAuditKeys
	}
	r.identities = cf.Identities
	return r, true, nil
}

// clientConfig loads the node configuration for a client-mode command: the
// file when it exists (for signing.publicKey and identities), else an empty
// one, since a laptop reading through the service needs no store section.
func clientConfig(path string, r resolved) (*policy.Config, error) {
	cfg, err := policy.Load(path)
	if err != nil {
		if path != defaultConfigPath {
			return nil, err
		}
		if _, serr := os.Stat(path); serr == nil {
			return nil, err
		}
		cfg = &policy.Config{}
	}
	if len(cfg.Identities) == 0 {
		cfg.Identities = r.identities
	}
	return cfg, nil
}

// clientTrustedKeys are --trusted-key (or the client file's), else the
// config's signing keys.
func clientTrustedKeys(cfg *policy.Config, r resolved) (*signing.TrustedKeys, error) {
	if len(r.trustedKeys) > 0 {
		return signing.LoadTrustedKeys(r.trustedKeys...)
	}
	tk, err := trustedKeys(cfg)
	if err != nil {
		return nil, fmt.Errorf("%v: through the service too, every object is verified here against keys you trust; pass --trusted-key FILE (the vault's signing.pub)", err)
	}
	return tk, nil
}

// clientAuditTrustedKeys verify the exported trail's heads: the keys
// trusted for manifests (nodes sign their heads with them) and the audit
// keys (--trusted-audit-key, the client file's, else the config's
// signing.auditKeys), which verify heads only: a service whose key an
// auditor must trust to read its records cannot use it to vouch for a
// checkpoint.
func clientAuditTrustedKeys(cfg *policy.Config, r resolved) (*signing.TrustedKeys, error) {
	if len(r.trustedKeys) > 0 {
		extra := r.trustedAuditKeys
		if len(extra) == 0 {
			extra = cfg.Signing.AuditKeys
		}
		return signing.LoadTrustedKeys(append(append([]string(nil), r.trustedKeys...), extra...)...)
	}
	tk, err := auditTrustedKeys(cfg, r.trustedAuditKeys...)
	if err != nil {
		return nil, fmt.Errorf("%v: through the service too, every segment is verified here against keys you trust; pass --trusted-key FILE (the vault's signing.pub) and --trusted-audit-key FILE (the service's)", err)
	}
	return tk, nil
}

// serviceAudited is the responder's audit trail in client mode: the
// service records every request durably before it sends the first byte
// (and refuses to serve when it cannot), so the authoritative record is
// the service's, exported to the store with the nodes'.
type serviceAudited struct{}

func (serviceAudited) Append(context.Context, audit.Record) (uint64, error) { return 0, nil }

// openRemoteResponder is openResponder in client mode.
func openRemoteResponder(configPath string, r resolved) (*responder.Responder, *policy.Config, func(), error) {
	cfg, err := clientConfig(configPath, r)
	if err != nil {
		return nil, nil, nil, err
	}
	tk, err := clientTrustedKeys(cfg, r)
	if err != nil {
		return nil, nil, nil, err
	}
	rs, err := remote.New(r.remote)
	if err != nil {
		return nil, nil, nil, err
	}
	var au responder.Auditor = serviceAudited{}
	if r.remote.Purpose == remote.PurposeRestore {
		au = restoreReporter{rs}
	}
	return &responder.Responder{Store: rs, Trusted: tk, Audit: au, Actor: localActor()}, cfg, func() {}, nil
}

// openRestoreResponder is openResponder for `ckvault restore`: in client
// mode the ciphertext is read for the purpose of a restore (the service
// authorises it with the verb restore, not fetch), and the restore's
// outcome — the pushed image's digest, registry and repository — is
// reported to the service's trail.
func openRestoreResponder(ctx context.Context, configPath string) (*responder.Responder, *policy.Config, func(), error) {
	rc, ok, err := client.resolve()
	if err != nil {
		return nil, nil, nil, err
	}
	if !ok {
		return openResponder(ctx, configPath)
	}
	rc.remote.Purpose = remote.PurposeRestore
	return openRemoteResponder(configPath, rc)
}

// restoreReporter is the responder's audit trail for a restore through
// the service. The service recorded the intent and the ciphertext read
// itself; the outcome, which only the client knows (where the image went),
// is reported with POST /v1/restores/{id}. A report that fails fails the
// restore, as a local outcome record that cannot be written does.
type restoreReporter struct{ rs *remote.Store }

func (r restoreReporter) Append(ctx context.Context, rec audit.Record) (uint64, error) {
	if rec.Detail["phase"] != "done" || (rec.Action != responder.ActionRestored && rec.Detail["request"] != responder.ActionRestored) {
		return 0, nil
	}
	if _, ok := responder.ParseBaseKey(rec.Subject); !ok {
		// An id that did not resolve: there is no checkpoint to report on
		// (the service recorded the listing that failed to find it).
		return 0, nil
	}
	outcome := remote.RestoreOK
	switch rec.Outcome {
	case audit.Denied:
		outcome = remote.RestoreDenied
	case audit.Error:
		outcome = remote.RestoreError
	}
	res, err := r.rs.ReportRestore(ctx, rec.Subject, remote.RestoreReportOf(outcome, rec.Detail))
	if err != nil {
		return 0, fmt.Errorf("reporting the restore to %s: %w", r.rs.Describe(), err)
	}
	return res.Record, nil
}

// remoteStoreTrail is readStoreTrail in client mode: the exported segments
// of every node and service replica, read through the service and verified
// here.
func remoteStoreTrail(ctx context.Context, configPath string, r resolved) (*audit.StoreTrail, error) {
	cfg, err := clientConfig(configPath, r)
	if err != nil {
		return nil, err
	}
	tk, err := clientAuditTrustedKeys(cfg, r)
	if err != nil {
		return nil, err
	}
	rs, err := remote.New(r.remote)
	if err != nil {
		return nil, err
	}
	return audit.ReadStore(ctx, rs, tk.DER())
}

// clientAuditTrail is, in client mode, the exported trail of every node and
// service replica read through the service and verified here; nil in
// direct mode.
func clientAuditTrail(ctx context.Context, configPath string) (*audit.StoreTrail, error) {
	rc, ok, err := client.resolve()
	if err != nil || !ok {
		return nil, err
	}
	return remoteStoreTrail(ctx, configPath, rc)
}
