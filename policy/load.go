package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// MaxConfigSize bounds the configuration file; anything larger is not a
// configuration someone wrote by hand and is refused before decoding.
const MaxConfigSize = 1 << 20

// Defaults, applied to keys the file leaves out. A key that is present is
// validated as written: "workers: 0" is an error, not a request for the
// default.
const (
	DefaultCheckpointsDir = "/var/lib/kubelet/checkpoints"
	DefaultStateDir       = "/var/lib/ckvault"
	DefaultWorkers        = 2
	DefaultShredPasses    = 1
	DefaultListen         = "127.0.0.1:9847"
	DefaultRescanInterval = "30s"
	DefaultOwner          = "0"
	DefaultPathStyle      = "auto"
	DefaultSignEvery      = 100
	DefaultSignInterval   = "1m"
	DefaultExportInterval = "5m"
)

// Error is one problem with the configuration file. Load returns every
// problem it finds at once (joined with errors.Join), so an operator fixes
// the file in one round.
type Error struct {
	File string // the configuration file, as given to Load
	Line int    // 1-based line of the offending key; 0 when unknown
	Key  string // dotted key path, e.g. "store.objectLock.mode"
	Msg  string // what is wrong and how to fix it
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config ")
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads, strictly decodes, defaults and validates the configuration
// file at path. Relative paths inside it are resolved against the file's
// own directory, so a configuration can travel with its keys.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("config %s does not exist: pass --config with the path of your ckvault.yaml (deploy/ckvault.example.yaml documents every key; `ckvault dev` writes one)", path)
		}
		return nil, fmt.Errorf("opening config %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	if len(data) > MaxConfigSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("file is larger than %d bytes; is this the right file?", MaxConfigSize)}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("failed to resolve config path %q: %w", path, err)
	}
	return Parse(data, path, filepath.Dir(abs))
}

// Parse decodes, defaults and validates a configuration held in memory.
// name is used in error messages; relative paths resolve against baseDir,
// which must be absolute.
func Parse(data []byte, name, baseDir string) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, syntaxError(name, err)
	}

	cfg := defaults()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: name, Msg: "file is empty; see deploy/ckvault.example.yaml for every key"}
		}
		return nil, decodeError(name, &root, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := 0
		if err == nil {
			line = extra.Line
		}
		return nil, &Error{File: name, Line: line, Msg: "a second YAML document follows the first (a stray \"---\"?); keep the whole configuration in one document"}
	}

	if cfg.Serve != nil {
		cfg.Serve.applyDefaults()
	}
	v := validator{file: name, root: &root}
	if lineOf(&root, "node") == 0 {
		cfg.Node, v.nodeFrom = defaultNode()
	}
	cfg.resolvePaths(baseDir)
	cfg.validate(&v)
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return cfg, nil
}

// NodeEnv names the environment variable that, when set, gives the default
// node name (a DaemonSet sets it from spec.nodeName: a pod's host name is
// the pod's, not the node's).
const NodeEnv = "CKVAULT_NODE"

// hostname is os.Hostname; tests replace it.
var hostname = os.Hostname

// defaultNode is the node name when the file has no node key, and where it
// came from (for messages). $CKVAULT_NODE is taken as written: the
// DaemonSet sets it from spec.nodeName. A host name is lower-cased and
// trimmed exactly as the kubelet does when it derives its own node name, so
// "Worker-1" becomes the "worker-1" Kubernetes knows; anything else that
// is not a valid node name is refused by validation, never rewritten.
func defaultNode() (node, from string) {
	if n := os.Getenv(NodeEnv); n != "" {
		return n, "$" + NodeEnv
	}
	h, err := hostname()
	if err != nil || strings.TrimSpace(h) == "" {
		return "", "the host name"
	}
	return k8sname.FromHostname(h), fmt.Sprintf("the host name %q, lower-cased as the kubelet does", h)
}

// defaults returns a Config with every default but the node name, which
// depends on whether the file has one (see defaultNode).
func defaults() *Config {
	return &Config{
		CheckpointsDir: DefaultCheckpointsDir,
		StateDir:       DefaultStateDir,
		Store:          StoreConfig{PathStyle: DefaultPathStyle},
		Daemon: DaemonConfig{
			Workers:        DefaultWorkers,
			ShredPasses:    DefaultShredPasses,
			Listen:         DefaultListen,
			RescanInterval: DefaultRescanInterval,
			Owner:          DefaultOwner,
		},
		Audit: AuditConfig{
			SignEvery:      DefaultSignEvery,
			SignInterval:   DefaultSignInterval,
			ExportInterval: DefaultExportInterval,
		},
	}
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func syntaxError(name string, err error) error {
	msg := err.Error()
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: name, Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return &Error{File: name, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (.+) not found in type (\S+)$`)
	typeErrRE      = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// decodeError turns yaml.v3's decoding errors into Errors that name the key
// path and line, with a suggestion for a misspelt key.
func decodeError(name string, root *yaml.Node, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return syntaxError(name, err)
	}
	var errs []error
	for _, s := range te.Errors {
		if m := unknownFieldRE.FindStringSubmatch(s); m != nil {
			line, _ := strconv.Atoi(m[1])
			key := m[2]
			path := findKeyPath(root, key, line)
			if path == "" {
				path = key
			}
			msg := "unknown key"
			if alt := suggest(key, knownKeys[m[3]]); alt != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", alt)
			} else if keys := knownKeys[m[3]]; len(keys) > 0 {
				msg += "; valid keys here: " + strings.Join(keys, ", ")
			}
			errs = append(errs, &Error{File: name, Line: line, Key: path, Msg: msg})
			continue
		}
		if m := typeErrRE.FindStringSubmatch(s); m != nil {
			line, _ := strconv.Atoi(m[1])
			errs = append(errs, &Error{File: name, Line: line, Key: findPathAtLine(root, line), Msg: "wrong type: " + m[2]})
			continue
		}
		errs = append(errs, &Error{File: name, Msg: s})
	}
	return errors.Join(errs...)
}

// knownKeys maps yaml.v3's type names ("policy.StoreConfig") to the keys
// that type accepts, for "did you mean" and "valid keys" hints.
var knownKeys = func() map[string][]string {
	m := map[string][]string{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || m[t.String()] != nil {
			return
		}
		var keys []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			keys = append(keys, tag)
		}
		sort.Strings(keys)
		m[t.String()] = keys
		for i := 0; i < t.NumField(); i++ {
			walk(t.Field(i).Type)
		}
	}
	walk(reflect.TypeOf(Config{}))
	return m
}()

// suggest returns the known key closest to key when it is a plausible
// misspelling (edit distance at most 2, or a case-only difference).
func suggest(key string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if strings.EqualFold(k, key) {
			return k
		}
		if d := editDistance(strings.ToLower(key), strings.ToLower(k)); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// findKeyPath returns the dotted path of the mapping key named key on the
// given line, or "".
func findKeyPath(root *yaml.Node, key string, line int) string {
	var found string
	walkKeys(root, "", func(path string, k, _ *yaml.Node) bool {
		if k.Line == line && k.Value == key {
			found = path
			return false
		}
		return true
	})
	return found
}

// findPathAtLine returns the dotted path of the innermost key on line (the
// last one, for flow mappings such as "daemon: {workers: x}").
func findPathAtLine(root *yaml.Node, line int) string {
	var found string
	walkKeys(root, "", func(path string, k, v *yaml.Node) bool {
		if k.Line == line || (v.Line == line && v.Kind == yaml.ScalarNode) {
			found = path
		}
		return k.Line <= line
	})
	return found
}

// lineOf returns the line of the value (or key) at a dotted path, or 0.
func lineOf(root *yaml.Node, path string) int {
	line := 0
	walkKeys(root, "", func(p string, k, _ *yaml.Node) bool {
		if p == path {
			line = k.Line
			return false
		}
		return true
	})
	return line
}

// walkKeys visits every mapping key in document order with its dotted path;
// sequence items get "[i]". fn returns false to stop.
func walkKeys(n *yaml.Node, prefix string, fn func(path string, k, v *yaml.Node) bool) bool {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if !walkKeys(c, prefix, fn) {
				return false
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if !fn(p, k, v) || !walkKeys(v, p, fn) {
				return false
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", prefix, i)
			if c.Kind == yaml.ScalarNode && !fn(p, c, c) {
				return false
			}
			if !walkKeys(c, p, fn) {
				return false
			}
		}
	}
	return true
}
