package policy

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// validator collects every problem with a decoded Config, each tagged with
// the key path and, where the key is present in the file, its line.
type validator struct {
	file string
	root *yaml.Node
	// nodeFrom says where a defaulted node name came from; "" when the
	// file sets node.
	nodeFrom string
	errs     []error
}

func (v *validator) add(key, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Line: lineOf(v.root, key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// kmsSchemes are the sigstore KMS providers a signing key URI may name.
var kmsSchemes = []string{"awskms://", "gcpkms://", "azurekms://", "hashivault://"}

// isKMSURI reports whether a signing key reference is a KMS URI rather
// than a file path.
func isKMSURI(s string) bool {
	for _, p := range kmsSchemes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// resolvePaths makes every file path in the configuration absolute,
// relative to baseDir (the configuration file's directory). Empty values
// stay empty; KMS URIs are not paths.
func (c *Config) resolvePaths(baseDir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) && !strings.Contains(*p, "://") {
			*p = filepath.Join(baseDir, *p)
		}
	}
	abs(&c.CheckpointsDir)
	abs(&c.StateDir)
	abs(&c.Store.CAFile)
	abs(&c.Store.ClientCert)
	abs(&c.Store.ClientKey)
	abs(&c.Store.AccessKeyFile)
	abs(&c.Store.SecretKeyFile)
	abs(&c.RecipientsFile)
	for ns, p := range c.Namespaces {
		abs(&p.RecipientsFile)
		c.Namespaces[ns] = p
	}
	abs(&c.Signing.Key)
	abs(&c.Signing.PasswordFile)
	abs(&c.Signing.PublicKey)
	for i := range c.Signing.AuditKeys {
		abs(&c.Signing.AuditKeys[i])
	}
	for i := range c.Signing.PublicKeys {
		abs(&c.Signing.PublicKeys[i])
	}
	for i := range c.Identities {
		abs(&c.Identities[i])
	}
	abs(&c.PluginDir)
	if c.Serve != nil {
		c.Serve.resolvePaths(abs)
	}
	if c.Retention != nil {
		abs(&c.Retention.AccessKeyFile)
		abs(&c.Retention.SecretKeyFile)
	}
	// store.url is not resolved: in file://x/y, x is a host, and a URL
	// that silently meant something else would be worse than an error.
}

var (
	// bucketRE is an S3 bucket name.
	bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

func (c *Config) validate(v *validator) {
	c.validateNode(v)
	checkDir(v, "checkpointsDir", c.CheckpointsDir)
	checkDir(v, "stateDir", c.StateDir)
	if c.CheckpointsDir != "" && c.StateDir != "" && filepath.Clean(c.CheckpointsDir) == filepath.Clean(c.StateDir) {
		v.add("stateDir", "is the same directory as checkpointsDir; keep the daemon's state apart from the archives it watches")
	}

	c.Store.validate(v)

	checkRecipients(v, "recipients", c.Recipients)
	checkPath(v, "recipientsFile", c.RecipientsFile)
	if len(c.Recipients) == 0 && c.RecipientsFile == "" {
		v.add("recipients", "no recipients: set recipients: [age1...] or recipientsFile: so every vaulted checkpoint can be decrypted by someone (namespaces without their own recipients use these)")
	}
	nss := make([]string, 0, len(c.Namespaces))
	for ns := range c.Namespaces {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	for _, ns := range nss {
		p := c.Namespaces[ns]
		key := "namespaces." + ns
		if err := k8sname.Namespace.Check(ns); err != nil {
			v.add(key, "%v; a key under namespaces: is a namespace name exactly as Kubernetes spells it", err)
		}
		checkRecipients(v, key+".recipients", p.Recipients)
		checkPath(v, key+".recipientsFile", p.RecipientsFile)
		if p.Skip && (len(p.Recipients) > 0 || p.RecipientsFile != "") {
			v.add(key+".skip", "skip is true, so this namespace's recipients would never be used; remove skip or the recipients")
		}
	}

	c.Signing.validate(v)

	for i, p := range c.Identities {
		checkPath(v, fmt.Sprintf("identities[%d]", i), p)
		if p == "" {
			v.add(fmt.Sprintf("identities[%d]", i), "is empty; name an age identity file or remove the entry")
		}
	}
	checkPath(v, "pluginDir", c.PluginDir)

	c.Daemon.validate(v)
	c.Audit.validate(v)
	c.Retention.validate(v)
	if c.Serve != nil {
		c.Serve.validate(v)
	}
}

// validateNode refuses a node name the object layout cannot hold. The name
// is a segment of every object key and is in every manifest and audit
// record, so a name Kubernetes would refuse (upper case, '_') is refused
// here, at start, rather than making every archive fail later.
func (c *Config) validateNode(v *validator) {
	fix := "set node: to this node's name as Kubernetes knows it (kubectl get nodes)"
	if s := k8sname.Suggest(k8sname.Node, c.Node); s != "" && s != c.Node {
		fix += ", e.g. node: " + s
	}
	switch {
	case c.Node == "" && v.nodeFrom == "":
		v.add("node", "is empty; %s", fix)
	case c.Node == "":
		v.add("node", "is not set and %s is unknown; %s", v.nodeFrom, fix)
	default:
		err := k8sname.Node.Check(c.Node)
		switch {
		case err == nil:
		case v.nodeFrom == "":
			v.add("node", "%v; %s", err, fix)
		default:
			v.add("node", "is not set, and its default (%s) is not usable: %v; %s", v.nodeFrom, err, fix)
		}
	}
}

func checkDir(v *validator, key, p string) {
	switch {
	case p == "":
		v.add(key, "is empty; name a directory (an absolute path)")
	case !filepath.IsAbs(p):
		v.add(key, "%q is not an absolute path", p)
	case filepath.Clean(p) == "/":
		v.add(key, "must not be the root directory")
	}
}

func checkPath(v *validator, key, p string) {
	if p == "" {
		return
	}
	if strings.ContainsRune(p, 0) {
		v.add(key, "contains a NUL byte")
	}
}

func checkRecipients(v *validator, key string, rs []string) {
	seen := map[string]bool{}
	for i, r := range rs {
		k := fmt.Sprintf("%s[%d]", key, i)
		switch {
		case r == "":
			v.add(k, "is empty; remove the entry or give an age recipient (age1...)")
		case strings.IndexFunc(r, unicode.IsSpace) >= 0:
			v.add(k, "contains white space; give one recipient per list entry, without spaces or comments")
		case seen[r]:
			v.add(k, "repeats an earlier recipient; remove the duplicate")
		}
		seen[r] = true
	}
}

func (s *StoreConfig) validate(v *validator) {
	if s.URL == "" {
		v.add("store.url", "is required: https://HOST[:PORT]/BUCKET[/PREFIX] for S3-compatible storage, or file:///PATH")
	} else if u, err := url.Parse(s.URL); err != nil {
		v.add("store.url", "is not a URL (%v); use https://HOST[:PORT]/BUCKET[/PREFIX] or file:///PATH", strings.TrimPrefix(err.Error(), "parse "))
	} else {
		switch u.Scheme {
		case "https", "http":
			if u.Scheme == "http" && !s.Insecure {
				v.add("store.url", "uses plain http://, which sends checkpoints' metadata and credentials unencrypted; use https://, or set store.insecure: true for development only")
			}
			if u.User != nil {
				v.add("store.url", "contains credentials; put them in store.accessKeyFile and store.secretKeyFile instead")
			}
			if u.Host == "" || u.Hostname() == "" {
				v.add("store.url", "has no host; use %s://HOST[:PORT]/BUCKET[/PREFIX]", u.Scheme)
			}
			if u.RawQuery != "" || u.Fragment != "" {
				v.add("store.url", "must not have a query or fragment")
			}
			bucket, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
			if bucket == "" {
				v.add("store.url", "names no bucket; use %s://%s/BUCKET[/PREFIX]", u.Scheme, u.Host)
			} else if !bucketRE.MatchString(bucket) {
				v.add("store.url", "bucket %q is not a valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-')", bucket)
			}
		case "file":
			if u.Host != "" {
				v.add("store.url", "file URL has a host %q; use file:///ABSOLUTE/PATH (three slashes)", u.Host)
			} else if !filepath.IsAbs(u.Path) || filepath.Clean(u.Path) == "/" {
				v.add("store.url", "file URL needs an absolute directory other than /: file:///ABSOLUTE/PATH")
			}
			if s.ObjectLock != nil {
				v.add("store.objectLock", "is not supported by a file:// store; remove it or use an S3 store with Object Lock")
			}
		default:
			v.add("store.url", "scheme %q is not supported; use https://HOST[:PORT]/BUCKET[/PREFIX] or file:///PATH", u.Scheme)
		}
	}
	switch s.PathStyle {
	case "auto", "path", "virtual":
	default:
		v.add("store.pathStyle", "%q is not one of auto, path, virtual", s.PathStyle)
	}
	checkPath(v, "store.caFile", s.CAFile)
	checkPath(v, "store.clientCert", s.ClientCert)
	checkPath(v, "store.clientKey", s.ClientKey)
	if (s.ClientCert == "") != (s.ClientKey == "") {
		v.add("store.clientCert", "clientCert and clientKey go together for mTLS; set both or neither")
	}
	checkPath(v, "store.accessKeyFile", s.AccessKeyFile)
	checkPath(v, "store.secretKeyFile", s.SecretKeyFile)
	if (s.AccessKeyFile == "") != (s.SecretKeyFile == "") {
		v.add("store.accessKeyFile", "accessKeyFile and secretKeyFile go together; set both, or neither to use AWS_* environment variables or web identity")
	}
	if ol := s.ObjectLock; ol != nil {
		switch ol.Mode {
		case "compliance", "governance":
		case "":
			v.add("store.objectLock.mode", "is required when objectLock is set: compliance or governance")
		default:
			v.add("store.objectLock.mode", "%q is not compliance or governance", ol.Mode)
		}
		if ol.Days <= 0 || ol.Days > 36500 {
			v.add("store.objectLock.days", "%d is out of range; give the retention in days, 1 to 36500", ol.Days)
		}
	}
}

func (s *SigningConfig) validate(v *validator) {
	switch {
	case s.Key == "":
		v.add("signing.key", "is required: a PEM private key file (ckvault keygen writes one) or a KMS URI (%s)", strings.Join(kmsSchemes, ", "))
	case strings.Contains(s.Key, "://") && !isKMSURI(s.Key):
		v.add("signing.key", "%q is neither a file nor a supported KMS URI (%s)", s.Key, strings.Join(kmsSchemes, ", "))
	case isKMSURI(s.Key) && s.PasswordFile != "":
		v.add("signing.passwordFile", "applies only to a key file, not to a KMS key; remove it")
	}
	checkPath(v, "signing.key", s.Key)
	checkPath(v, "signing.passwordFile", s.PasswordFile)
	checkPath(v, "signing.publicKey", s.PublicKey)
	for i, p := range s.PublicKeys {
		k := fmt.Sprintf("signing.publicKeys[%d]", i)
		if p == "" {
			v.add(k, "is empty; name a PEM public key file or remove the entry")
		}
		checkPath(v, k, p)
	}
	for i, p := range s.AuditKeys {
		k := fmt.Sprintf("signing.auditKeys[%d]", i)
		if p == "" {
			v.add(k, "is empty; name a PEM public key file or remove the entry")
		}
		checkPath(v, k, p)
	}
}

func (d *DaemonConfig) validate(v *validator) {
	if d.Workers < 1 || d.Workers > 64 {
		v.add("daemon.workers", "%d is out of range; use 1 to 64 (default %d)", d.Workers, DefaultWorkers)
	}
	if d.ShredPasses < 0 || d.ShredPasses > 8 {
		v.add("daemon.shredPasses", "%d is out of range; use 0 (unlink only) to 8 (default %d)", d.ShredPasses, DefaultShredPasses)
	}
	if host, port, err := net.SplitHostPort(d.Listen); err != nil {
		v.add("daemon.listen", "%q is not HOST:PORT (e.g. %s)", d.Listen, DefaultListen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.add("daemon.listen", "port %q is not a number from 0 to 65535", port)
	} else if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		v.add("daemon.listen", "host %q is not an IP address or localhost", host)
	}
	checkDuration(v, "daemon.rescanInterval", d.RescanInterval, time.Second, 24*time.Hour)
	if _, _, err := parseOwner(d.Owner); err != nil {
		v.add("daemon.owner", "%v", err)
	}
}

func (a *AuditConfig) validate(v *validator) {
	if a.SignEvery < 1 || a.SignEvery > 1_000_000 {
		v.add("audit.signEvery", "%d is out of range; sign the log head every 1 to 1000000 records (default %d)", a.SignEvery, DefaultSignEvery)
	}
	checkDuration(v, "audit.signInterval", a.SignInterval, time.Second, 24*time.Hour)
	checkDuration(v, "audit.exportInterval", a.ExportInterval, time.Second, 7*24*time.Hour)
}

func checkDuration(v *validator, key, s string, lo, hi time.Duration) {
	d, err := time.ParseDuration(s)
	if err != nil {
		v.add(key, "%q is not a duration; write e.g. 30s, 5m or 1h", s)
		return
	}
	if d < lo || d > hi {
		v.add(key, "%s is out of range; use %s to %s", d, lo, hi)
	}
}

// parseOwner parses daemon.owner: a numeric uid, or "any".
func parseOwner(s string) (uid uint32, any bool, err error) {
	if s == "any" {
		return 0, true, nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false, fmt.Errorf("%q is not a numeric uid or \"any\" (the runtimes write archives as root: 0)", s)
	}
	return uint32(n), false, nil
}
