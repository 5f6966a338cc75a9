package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// minimal is the smallest valid configuration; cases below add to it.
const minimal = `node: node-a
store:
  url: https://minio.example:9000/vault/prod
recipients: [age1ay78k3va00z4gxyk8phat6nzzd602f83j8eu4xycr50uj6rldvuqx50l84]
signing:
  key: /etc/ckvault/signing.key
`

func TestDefaults(t *testing.T) {
	t.Setenv(NodeEnv, "")
	cfg, err := Parse([]byte(minimal), "c.yaml", "/etc/ckvault")
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Daemon
	if cfg.CheckpointsDir != DefaultCheckpointsDir || cfg.StateDir != DefaultStateDir ||
		d.Workers != 2 || d.ShredPasses != 1 || d.Listen != "127.0.0.1:9847" ||
		d.RescanEvery() != 30*time.Second || d.Owner != "0" || cfg.Store.PathStyle != "auto" ||
		cfg.Audit.SignEvery != 100 || cfg.Audit.SignEveryInterval() != time.Minute || cfg.Audit.ExportEvery() != 5*time.Minute {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if uid, any := d.OwnerRule(); uid != 0 || any {
		t.Errorf("OwnerRule() = %d, %v; want 0, false", uid, any)
	}

	noNode := strings.Replace(minimal, "node: node-a\n", "", 1)
	cfg, err = Parse([]byte(noNode), "c.yaml", "/etc/ckvault")
	if err != nil {
		t.Fatal(err)
	}
	if host, _ := os.Hostname(); cfg.Node != strings.ToLower(host) {
		t.Errorf("node = %q, want the host name %q lower-cased", cfg.Node, host)
	}
}

// TestNodeDefault: without a node key the node is $CKVAULT_NODE as
// written, else the host name lower-cased as the kubelet does; a default
// the object layout cannot hold is refused at load, naming the key and
// the fix, instead of failing every archive later.
func TestNodeDefault(t *testing.T) {
	noNode := strings.Replace(minimal, "node: node-a\n", "", 1)
	for _, tt := range []struct {
		env, host string
		hostErr   error
		node      string   // want this node name, or
		errs      []string // these in the error
	}{
		{host: "worker-1", node: "worker-1"},
		{host: "Worker-1.Example.COM", node: "worker-1.example.com"},
		{host: "Worker_1", errs: []string{"c.yaml: node: is not set", `the host name "Worker_1"`, `invalid node name "worker_1"`, "kubectl get nodes", "e.g. node: worker-1"}},
		{hostErr: errors.New("no uts"), errs: []string{"node: is not set and the host name is unknown", "set node:"}},
		{env: "node-from-env", host: "Worker_1", node: "node-from-env"},
		{env: "Node-From-Env", host: "worker-1", errs: []string{"$CKVAULT_NODE", `invalid node name "Node-From-Env"`, "e.g. node: node-from-env"}},
	} {
		t.Setenv(NodeEnv, tt.env)
		hostname = func() (string, error) { return tt.host, tt.hostErr }
		cfg, err := Parse([]byte(noNode), "c.yaml", "/etc/ckvault")
		hostname = os.Hostname
		if tt.errs == nil {
			if err != nil || cfg.Node != tt.node {
				t.Errorf("env %q host %q: node %v, error %v; want node %q", tt.env, tt.host, cfg, err, tt.node)
			}
			continue
		}
		if err == nil {
			t.Errorf("env %q host %q: accepted node %q", tt.env, tt.host, cfg.Node)
			continue
		}
		for _, w := range tt.errs {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("env %q host %q: error %q lacks %q", tt.env, tt.host, err, w)
			}
		}
	}
	// A node in the file is taken as written: never lower-cased.
	t.Setenv(NodeEnv, "")
	if _, err := Parse([]byte(strings.Replace(minimal, "node-a", "Node-A", 1)), "c.yaml", "/etc/ckvault"); err == nil {
		t.Error("node: Node-A in the file was accepted (it must be refused, not lower-cased)")
	}
}

func TestRelativePaths(t *testing.T) {
	src := minimal + `checkpointsDir: cp
stateDir: ./state
recipientsFile: r.txt
namespaces:
  team-a: {recipientsFile: ../a.txt}
identities: [id.key]
`
	src = strings.Replace(src, "key: /etc/ckvault/signing.key", "key: keys/signing.key\n  publicKeys: [old.pub]", 1)
	cfg, err := Parse([]byte(src), "c.yaml", "/srv/ck")
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		cfg.CheckpointsDir:                      "/srv/ck/cp",
		cfg.StateDir:                            "/srv/ck/state",
		cfg.RecipientsFile:                      "/srv/ck/r.txt",
		cfg.Namespaces["team-a"].RecipientsFile: "/srv/a.txt",
		cfg.Identities[0]:                       "/srv/ck/id.key",
		cfg.Signing.Key:                         "/srv/ck/keys/signing.key",
		cfg.Signing.PublicKeys[0]:               "/srv/ck/old.pub",
	} {
		if got != want {
			t.Errorf("resolved %q, want %q", got, want)
		}
	}

	kms := strings.Replace(minimal, "/etc/ckvault/signing.key", "awskms:///arn:aws:kms:eu-west-1:1:key/x", 1)
	cfg, err = Parse([]byte(kms), "c.yaml", "/srv/ck")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Signing.Key != "awskms:///arn:aws:kms:eu-west-1:1:key/x" || !cfg.SigningKeyIsKMS() {
		t.Errorf("KMS URI was rewritten: %q", cfg.Signing.Key)
	}
}

// TestErrors covers every error Load can report: each case's file must be
// rejected with a message containing every wanted substring (key, line and
// the hint).
func TestErrors(t *testing.T) {
	with := func(extra string) string { return minimal + extra }
	replace := func(old, new string) string { return strings.Replace(minimal, old, new, 1) }
	// store adds keys to the store block.
	store := func(extra string) string {
		return replace("  url: https://minio.example:9000/vault/prod\n", "  url: https://minio.example:9000/vault/prod\n"+extra)
	}
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"empty", "", []string{"empty"}},
		{"comment only", "# nothing\n", []string{"empty"}},
		{"syntax", "node: [\n", []string{"invalid YAML"}},
		{"tabs", "node:\n\t- a\n", []string{"c.yaml:2", "invalid YAML"}},
		{"unknown top", with("nodes: x\n"), []string{"c.yaml:7", "nodes", "unknown key", `did you mean "node"?`}},
		{"unknown nested", replace("  url:", "  uri:"), []string{"c.yaml:3", "store.uri", `did you mean "url"?`}},
		{"case", replace("checkpointsDir", "checkpointsdir") + "checkpointsdir: /x\n", []string{"checkpointsdir", `did you mean "checkpointsDir"?`}},
		{"unknown far", with("zzzzzzzz: 1\n"), []string{"zzzzzzzz", "valid keys here:"}},
		{"unknown in namespace", with("namespaces:\n  a: {skp: true}\n"), []string{"namespaces.a.skp", `did you mean "skip"?`}},
		{"unknown in objectLock", store("  objectLock: {mode: compliance, dayz: 3}\n"), []string{"dayz", `did you mean "days"?`}},
		{"wrong type", with("daemon: {workers: many}\n"), []string{"c.yaml:7", "daemon.workers", "wrong type"}},
		{"second document", with("---\nnode: b\n"), []string{"second YAML document"}},
		{"empty second document", with("---\n"), []string{"second YAML document"}},
		{"bad node", replace("node-a", "node/a"), []string{"c.yaml:1", "node", `invalid node name "node/a"`}},
		{"node with capitals", replace("node-a", "Worker_1"), []string{"c.yaml:1", "node:", `invalid node name "Worker_1"`, "upper-case 'W'", "e.g. node: worker-1"}},
		{"node with underscore", replace("node-a", "worker_1"), []string{"c.yaml:1", "node:", "'_' at offset 6", "e.g. node: worker-1"}},
		{"empty node", replace("node-a", `""`), []string{"node", "is empty"}},
		{"relative ok but root", with("checkpointsDir: /\n"), []string{"checkpointsDir", "root directory"}},
		{"empty dir", with("stateDir: \"\"\n"), []string{"stateDir", "is empty"}},
		{"same dirs", with("checkpointsDir: /a\nstateDir: /a/\n"), []string{"stateDir", "same directory"}},
		{"no store", replace("  url: https://minio.example:9000/vault/prod\n", "  region: x\n"), []string{"store.url", "is required"}},
		{"ftp", replace("https://minio", "ftp://minio"), []string{"c.yaml:3", "store.url", `scheme "ftp"`}},
		{"http", replace("https://minio", "http://minio"), []string{"store.url", "store.insecure: true"}},
		{"creds in url", replace("https://minio", "https://ak:sk@minio"), []string{"store.url", "credentials"}},
		{"no host", replace("https://minio.example:9000/vault/prod", "https:///vault"), []string{"store.url", "no host"}},
		{"no bucket", replace("https://minio.example:9000/vault/prod", "https://minio.example:9000/"), []string{"store.url", "names no bucket"}},
		{"bad bucket", replace("/vault/prod", "/Vault_X/prod"), []string{"store.url", "not a valid S3 bucket"}},
		{"query", replace("/vault/prod", "/vault/prod?x=1"), []string{"store.url", "query"}},
		{"file host", replace("https://minio.example:9000/vault/prod", "file://host/x"), []string{"store.url", "three slashes"}},
		{"file root", replace("https://minio.example:9000/vault/prod", "file:///"), []string{"store.url", "absolute directory"}},
		{"file lock", strings.Replace(store("  objectLock: {mode: compliance, days: 1}\n"), "https://minio.example:9000/vault/prod", "file:///v", 1), []string{"store.objectLock", "file:// store"}},
		{"pathStyle", store("  pathStyle: dns\n"), []string{"store.pathStyle", "auto, path, virtual"}},
		{"cert without key", store("  clientCert: c.pem\n"), []string{"store.clientCert", "both or neither"}},
		{"access without secret", store("  secretKeyFile: s\n"), []string{"store.accessKeyFile", "both"}},
		{"lock mode", store("  objectLock: {mode: forever, days: 3}\n"), []string{"store.objectLock.mode", "compliance or governance"}},
		{"lock no mode", store("  objectLock: {days: 3}\n"), []string{"store.objectLock.mode", "is required"}},
		{"lock days", store("  objectLock: {mode: governance, days: 0}\n"), []string{"store.objectLock.days", "1 to 36500"}},
		{"no recipients", replace("recipients: [age1ay78k3va00z4gxyk8phat6nzzd602f83j8eu4xycr50uj6rldvuqx50l84]\n", ""), []string{"recipients", "no recipients"}},
		{"empty recipient", with("recipientsFile: r\nnamespaces:\n  a: {recipients: ['']}\n"), []string{"namespaces.a.recipients[0]", "is empty"}},
		{"space recipient", replace("[age1ay78k3va00z4gxyk8phat6nzzd602f83j8eu4xycr50uj6rldvuqx50l84]", "['age1x age1y']"), []string{"c.yaml:4", "recipients[0]", "white space"}},
		{"dup recipient", replace("[age1ay78k3va00z4gxyk8phat6nzzd602f83j8eu4xycr50uj6rldvuqx50l84]", "[a, b, a]"), []string{"recipients[2]", "duplicate"}},
		{"bad namespace", with("namespaces:\n  Payments: {skip: true}\n"), []string{"namespaces.Payments", "namespace name"}},
		{"skip with recipients", with("namespaces:\n  a: {skip: true, recipients: [x]}\n"), []string{"namespaces.a.skip", "never be used"}},
		{"no signing key", replace("  key: /etc/ckvault/signing.key\n", "  publicKey: p\n"), []string{"signing.key", "is required"}},
		{"bad kms", replace("/etc/ckvault/signing.key", "vault://x"), []string{"signing.key", "KMS URI"}},
		{"kms password", replace("/etc/ckvault/signing.key", "hashivault://k") + "  passwordFile: p\n", []string{"signing.passwordFile", "KMS"}},
		{"empty public key", with("  publicKeys: ['']\n"), []string{"signing.publicKeys[0]", "is empty"}},
		{"empty identity", with("identities: ['']\n"), []string{"identities[0]", "is empty"}},
		{"workers 0", with("daemon: {workers: 0}\n"), []string{"daemon.workers", "1 to 64"}},
		{"workers 65", with("daemon: {workers: 65}\n"), []string{"daemon.workers", "1 to 64"}},
		{"passes", with("daemon: {shredPasses: 9}\n"), []string{"daemon.shredPasses", "0 (unlink only) to 8"}},
		{"passes negative", with("daemon: {shredPasses: -1}\n"), []string{"daemon.shredPasses"}},
		{"listen", with("daemon: {listen: 9847}\n"), []string{"daemon.listen", "HOST:PORT"}},
		{"listen port", with("daemon: {listen: 'localhost:http'}\n"), []string{"daemon.listen", "port"}},
		{"listen host", with("daemon: {listen: 'example.com:80'}\n"), []string{"daemon.listen", "not an IP"}},
		{"rescan", with("daemon: {rescanInterval: 30}\n"), []string{"daemon.rescanInterval", "not a duration"}},
		{"rescan small", with("daemon: {rescanInterval: 10ms}\n"), []string{"daemon.rescanInterval", "out of range"}},
		{"owner", with("daemon: {owner: root}\n"), []string{"daemon.owner", "numeric uid"}},
		{"owner neg", with("daemon: {owner: '-1'}\n"), []string{"daemon.owner"}},
		{"signEvery", with("audit: {signEvery: 0}\n"), []string{"audit.signEvery", "1 to 1000000"}},
		{"signInterval", with("audit: {signInterval: soon}\n"), []string{"audit.signInterval", "not a duration"}},
		{"exportInterval", with("audit: {exportInterval: 0s}\n"), []string{"audit.exportInterval", "out of range"}},
		{"several at once", with("daemon: {workers: 0, shredPasses: 9}\n"), []string{"daemon.workers", "daemon.shredPasses"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.src), "c.yaml", "/etc/ckvault")
			if err == nil {
				t.Fatalf("accepted:\n%s\nconfig: %+v", tt.src, cfg)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("error %v is not a *policy.Error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ckvault.yaml")
	if err := os.WriteFile(p, []byte(minimal+"recipientsFile: rcpt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RecipientsFile != filepath.Join(dir, "rcpt") {
		t.Errorf("recipientsFile = %q, want it beside the config", cfg.RecipientsFile)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, bytes.Repeat([]byte("# x\n"), MaxConfigSize/4+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
}

func TestNamespacePolicy(t *testing.T) {
	cfg, err := Parse([]byte(minimal+`recipientsFile: /g.txt
namespaces:
  payments: {recipients: [p1, p2]}
  files: {recipientsFile: /f.txt}
  kube-system: {skip: true}
  plain: {}
`), "c.yaml", "/")
	if err != nil {
		t.Fatal(err)
	}
	global := cfg.Recipients
	tests := []struct {
		ns   string
		rs   []string
		file string
		skip bool
	}{
		{"payments", []string{"p1", "p2"}, "", false},
		{"files", nil, "/f.txt", false},
		{"kube-system", nil, "", true},
		{"plain", global, "/g.txt", false},
		{"other", global, "/g.txt", false},
	}
	for _, tt := range tests {
		rs, file, skip := cfg.NamespacePolicy(tt.ns)
		if !reflect.DeepEqual(rs, tt.rs) || file != tt.file || skip != tt.skip {
			t.Errorf("NamespacePolicy(%q) = %v, %q, %v; want %v, %q, %v", tt.ns, rs, file, skip, tt.rs, tt.file, tt.skip)
		}
	}
}

// TestExample loads deploy/ckvault.example.yaml and checks that it sets
// every key the Config type has, so the example documents all of them.
func TestExample(t *testing.T) {
	p := filepath.Join("..", "deploy", "ckvault.example.yaml")
	cfg, err := Load(p)
	if err != nil {
		t.Fatalf("the example config does not load: %v", err)
	}
	if cfg.Store.ObjectLock == nil || len(cfg.Namespaces) == 0 {
		t.Fatal("example lacks objectLock or namespaces")
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	walkKeys(&root, "", func(path string, _, _ *yaml.Node) bool {
		// namespaces.<name>.key → namespaces.*.key
		parts := strings.Split(path, ".")
		if len(parts) >= 2 && parts[0] == "namespaces" {
			parts[1] = "*"
		}
		if len(parts) >= 3 && parts[0] == "retention" && parts[1] != "global" {
			parts[2] = "*" // retention.pods.<ns/pod>.key → retention.pods.*.key
		}
		present[strings.Join(parts, ".")] = true
		return true
	})
	// The limits are documented once, under retention.global; the other
	// scopes take the same keys.
	for k := range present {
		if lim, ok := strings.CutPrefix(k, "retention.global."); ok {
			for _, scope := range []string{"namespaces", "pods", "containers"} {
				present["retention."+scope+".*."+lim] = true
			}
		}
	}
	for _, k := range allKeys(reflect.TypeOf(Config{}), "") {
		if !present[k] {
			t.Errorf("deploy/ckvault.example.yaml does not document %s", k)
		}
	}
}

// allKeys lists every dotted key path of a config type; map values are
// under "*".
func allKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		k := tag
		if prefix != "" {
			k = prefix + "." + tag
		}
		keys = append(keys, k)
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct:
			keys = append(keys, allKeys(ft, k)...)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			keys = append(keys, allKeys(ft.Elem(), k+".*")...)
		}
	}
	return keys
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	// The full example is not a seed: minimizing a 5 KB input whenever it
	// finds new coverage eats a short fuzz run. TestExample covers it.
	f.Add([]byte("node: [\n"))
	f.Add([]byte(minimal + "---\n"))
	f.Add([]byte(minimal + "namespaces: {a: {skip: true}}\ndaemon: {workers: 3}\n"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, "fuzz.yaml", "/base")
		if err != nil {
			return
		}
		// Round trip: a valid config marshals to a file that parses to the
		// same config.
		out, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatalf("marshal valid config: %v", err)
		}
		cfg2, err := Parse(out, "fuzz2.yaml", "/other")
		if err != nil {
			t.Fatalf("re-parse of a valid config failed: %v\n%s", err, out)
		}
		out2, err := yaml.Marshal(cfg2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the config:\n%s\n---\n%s", out, out2)
		}
	})
}

// TestDaemonSetConfig loads the configuration embedded in the DaemonSet's
// ConfigMap, as the pod would see it.
func TestDaemonSetConfig(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "components", "node", "node.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var obj struct {
			Kind string
			Data map[string]string
		}
		if err := dec.Decode(&obj); err != nil {
			t.Fatalf("no ConfigMap with ckvault.yaml: %v", err)
		}
		if obj.Kind != "ConfigMap" {
			continue
		}
		t.Setenv(NodeEnv, "node-from-env")
		cfg, err := Parse([]byte(obj.Data["ckvault.yaml"]), "configmap ckvault.yaml", "/etc/ckvault")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Node != "node-from-env" || cfg.Signing.Key != "/etc/ckvault/signing/signing.key" {
			t.Errorf("node %q, signing key %q", cfg.Node, cfg.Signing.Key)
		}
		return
	}
}
