// Package policy holds the node's configuration: where checkpoints appear,
// where the vault is, who may decrypt which namespace's checkpoints, and how
// the daemon signs and shreds. It decodes the one YAML file strictly.
package policy

// Config is the whole configuration file (deploy/ckvault.example.yaml
// documents every key).
type Config struct {
	// Node names this node in object keys, manifests and audit records.
	// Default: the host name.
	Node string `yaml:"node"`
	// CheckpointsDir is the directory the kubelet writes archives to.
	CheckpointsDir string `yaml:"checkpointsDir"`
	// StateDir holds the bbolt database and the local socket (0700).
	StateDir string `yaml:"stateDir"`

	Store StoreConfig `yaml:"store"`

	// Recipients may decrypt every vaulted checkpoint unless a namespace
	// policy says otherwise; RecipientsFile adds more, one per line.
	Recipients     []string `yaml:"recipients"`
	RecipientsFile string   `yaml:"recipientsFile"`

	// Namespaces holds per-namespace policy, keyed by namespace name.
	Namespaces map[string]NamespacePolicy `yaml:"namespaces"`

	Signing SigningConfig `yaml:"signing"`

	// Identities lists age identity files for the responder commands
	// (fetch, inspect) when -i is not given.
	Identities []string `yaml:"identities"`
	// PluginDir is the only directory age plugin binaries are run from.
	PluginDir string `yaml:"pluginDir"`

	Daemon DaemonConfig `yaml:"daemon"`
	Audit  AuditConfig  `yaml:"audit"`

	// Retention is applied by `ckvault gc` (retention.go).
	Retention *RetentionConfig `yaml:"retention"`

	// Serve configures `ckvault serve` (the vault service); nil elsewhere.
	Serve *ServeConfig `yaml:"serve"`
}

// StoreConfig locates the object store.
type StoreConfig struct {
	// URL is https://HOST[:PORT]/BUCKET[/PREFIX] or file:///PATH.
	URL    string `yaml:"url"`
	Region string `yaml:"region"`
	// PathStyle forces path-style bucket addressing (MinIO, versitygw);
	// "auto" (default) lets the client choose.
	PathStyle     string      `yaml:"pathStyle"`
	CAFile        string      `yaml:"caFile"`
	ClientCert    string      `yaml:"clientCert"`
	ClientKey     string      `yaml:"clientKey"`
	AccessKeyFile string      `yaml:"accessKeyFile"`
	SecretKeyFile string      `yaml:"secretKeyFile"`
	ObjectLock    *ObjectLock `yaml:"objectLock"`
	// Insecure allows plain http:// — for development only; it is logged
	// as a warning at every start.
	Insecure bool `yaml:"insecure"`
}

// ObjectLock is WORM retention for every object written.
type ObjectLock struct {
	Mode      string `yaml:"mode"` // compliance or governance
	Days      int    `yaml:"days"`
	LegalHold bool   `yaml:"legalHold"`
}

// NamespacePolicy overrides the global policy for one namespace.
type NamespacePolicy struct {
	Recipients     []string `yaml:"recipients"`
	RecipientsFile string   `yaml:"recipientsFile"`
	// Skip leaves this namespace's archives alone (not vaulted, not shredded).
	Skip bool `yaml:"skip"`
}

// SigningConfig names the signing key and the keys verifiers trust.
type SigningConfig struct {
	// Key is a PEM file path or a KMS URI (awskms://, hashivault://, ...).
	Key          string `yaml:"key"`
	PasswordFile string `yaml:"passwordFile"`
	// PublicKey is the key verifiers trust; PublicKeys adds more for
	// rotation.
	PublicKey  string   `yaml:"publicKey"`
	PublicKeys []string `yaml:"publicKeys"`
	// AuditKeys are keys trusted to sign audit heads only, never
	// manifests: those of signers that vault nothing (the vault service's
	// replicas, the retention job). Trusting such a key in PublicKeys
	// would let whoever holds it — a compromised service — vouch for a
	// forged checkpoint.
	AuditKeys []string `yaml:"auditKeys"`
}

// DaemonConfig tunes the node daemon.
type DaemonConfig struct {
	Workers     int    `yaml:"workers"`     // default 2
	ShredPasses int    `yaml:"shredPasses"` // default 1
	Listen      string `yaml:"listen"`      // metrics/health address, default 127.0.0.1:9847
	// RescanInterval is the safety-net rescan period (Go duration).
	RescanInterval string `yaml:"rescanInterval"`
	// Owner is the required owner of admitted archives: a uid, or "any".
	// Default 0 (root), as the runtimes write them.
	Owner string `yaml:"owner"`
}

// AuditConfig tunes the audit trail.
type AuditConfig struct {
	// SignEvery and SignInterval set how often the log head is signed.
	SignEvery    int    `yaml:"signEvery"`
	SignInterval string `yaml:"signInterval"`
	// ExportInterval is how often sealed segments go to the store.
	ExportInterval string `yaml:"exportInterval"`
}
