package policy

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// ServeConfig is the serve: section, read by `ckvault serve` only. Absent
// (nil) for nodes.
type ServeConfig struct {
	// Listen is the HTTPS address, HOST:PORT (default 0.0.0.0:8443).
	Listen string `yaml:"listen"`
	// TLSCert and TLSKey are the service's certificate and key (PEM),
	// reloaded when the files change.
	TLSCert string `yaml:"tlsCert"`
	TLSKey  string `yaml:"tlsKey"`
	// ClientCA is the CA bundle client certificates must chain to (mTLS).
	// Empty: no client certificates are accepted.
	ClientCA string `yaml:"clientCA"`
	// Kubernetes enables bearer tokens (TokenReview) and, with Authorize,
	// SubjectAccessReview instead of Roles.
	Kubernetes *ServeKubernetes `yaml:"kubernetes"`
	// Roles are the config authoriser's grants; deny by default.
	Roles []ServeRole `yaml:"roles"`
	// IndexRefresh is how often the index looks for new objects (Go
	// duration, default 1m).
	IndexRefresh string `yaml:"indexRefresh"`
	// MaxStreams caps concurrent object streams (default 64).
	MaxStreams int `yaml:"maxStreams"`
	// RateLimit is requests per second per identity (default 20), with
	// bursts of RateBurst (default 40).
	RateLimit float64 `yaml:"rateLimit"`
	RateBurst int     `yaml:"rateBurst"`
}

// ServeKubernetes configures TokenReview and SubjectAccessReview.
type ServeKubernetes struct {
	// Kubeconfig is the file to reach the API server; empty = in-cluster.
	Kubeconfig string `yaml:"kubeconfig"`
	// Audience is what tokens must be issued for (required).
	Audience string `yaml:"audience"`
	// Authorize delegates authorisation to SubjectAccessReview on the
	// virtual resources of group vault.ckvault.dev (Roles must then be empty).
	Authorize bool `yaml:"authorize"`
}

// ServeRole grants verbs on namespaces to subjects.
type ServeRole struct {
	Name       string         `yaml:"name"`
	Verbs      []string       `yaml:"verbs"`
	Namespaces []string       `yaml:"namespaces"`
	Subjects   []ServeSubject `yaml:"subjects"`
}

// ServeSubject is one user or one group (exactly one of the two).
type ServeSubject struct {
	User  string `yaml:"user"`
	Group string `yaml:"group"`
}

// ServeVerb is one thing a caller may do through the service, and the
// Kubernetes virtual resource and verb SubjectAccessReview is asked about.
type ServeVerb struct {
	Name     string
	Resource string // in group KubeGroup
	KubeVerb string
}

// KubeGroup is the API group of the service's virtual resources.
const KubeGroup = "vault.ckvault.dev"

// ServeVerbs lists every verb the service authorises. Adding a verb to the
// service is one line here (the config authoriser, the SubjectAccessReview
// authoriser and validation all read this table).
var ServeVerbs = []ServeVerb{
	{"list", "checkpoints", "list"},
	{"get", "checkpoints", "get"},
	{"fetch", "checkpoints", "fetch"},
	{"restore", "checkpoints", "restore"},
	{"audit", "auditevents", "list"},
	{"pin", "checkpoints", "pin"},
	{"gc", "checkpoints", "gc"},
}

// LookupServeVerb returns the verb named name.
func LookupServeVerb(name string) (ServeVerb, bool) {
	for _, v := range ServeVerbs {
		if v.Name == name {
			return v, true
		}
	}
	return ServeVerb{}, false
}

func serveVerbNames() string {
	n := make([]string, len(ServeVerbs))
	for i, v := range ServeVerbs {
		n[i] = v.Name
	}
	return strings.Join(n, ", ")
}

// Serve defaults.
const (
	DefaultServeListen  = "0.0.0.0:8443"
	DefaultIndexRefresh = "1m"
	DefaultMaxStreams   = 64
	DefaultRateLimit    = 20
	DefaultRateBurst    = 40
)

// IndexRefreshEvery is serve.indexRefresh parsed (validated by Load).
func (s *ServeConfig) IndexRefreshEvery() time.Duration { return mustDuration(s.IndexRefresh) }

func (s *ServeConfig) applyDefaults() {
	if s.Listen == "" {
		s.Listen = DefaultServeListen
	}
	if s.IndexRefresh == "" {
		s.IndexRefresh = DefaultIndexRefresh
	}
	if s.MaxStreams == 0 {
		s.MaxStreams = DefaultMaxStreams
	}
	if s.RateLimit == 0 {
		s.RateLimit = DefaultRateLimit
	}
	if s.RateBurst == 0 {
		s.RateBurst = DefaultRateBurst
	}
}

func (s *ServeConfig) resolvePaths(abs func(*string)) {
	abs(&s.TLSCert)
	abs(&s.TLSKey)
	abs(&s.ClientCA)
	if s.Kubernetes != nil {
		abs(&s.Kubernetes.Kubeconfig)
	}
}

func (s *ServeConfig) validate(v *validator) {
	if host, port, err := net.SplitHostPort(s.Listen); err != nil {
		v.add("serve.listen", "%q is not HOST:PORT (e.g. %s)", s.Listen, DefaultServeListen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.add("serve.listen", "port %q is not a number from 0 to 65535", port)
	} else if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		v.add("serve.listen", "host %q is not an IP address or localhost", host)
	}
	if s.TLSCert == "" || s.TLSKey == "" {
		v.add("serve.tlsCert", "the service speaks HTTPS only: set tlsCert and tlsKey (PEM files)")
	}
	checkPath(v, "serve.tlsCert", s.TLSCert)
	checkPath(v, "serve.tlsKey", s.TLSKey)
	checkPath(v, "serve.clientCA", s.ClientCA)
	if s.ClientCA == "" && s.Kubernetes == nil {
		v.add("serve", "no way to authenticate callers: set clientCA (client certificates) or kubernetes (bearer tokens)")
	}
	if k := s.Kubernetes; k != nil {
		checkPath(v, "serve.kubernetes.kubeconfig", k.Kubeconfig)
		if strings.TrimSpace(k.Audience) == "" {
			v.add("serve.kubernetes.audience", "is required: tokens are accepted only when issued for this audience (e.g. checkpoint-vault)")
		}
		if k.Authorize && len(s.Roles) > 0 {
			v.add("serve.roles", "kubernetes.authorize delegates every decision to SubjectAccessReview, so these roles would never be consulted; remove them or set authorize: false")
		}
	}
	if len(s.Roles) == 0 && (s.Kubernetes == nil || !s.Kubernetes.Authorize) {
		v.add("serve.roles", "no roles and no kubernetes.authorize: every request would be denied; grant roles (verbs %s) or delegate to Kubernetes", serveVerbNames())
	}
	names := map[string]bool{}
	for i, r := range s.Roles {
		key := fmt.Sprintf("serve.roles[%d]", i)
		if r.Name == "" {
			v.add(key+".name", "is required (it names the grant in audit records)")
		} else if names[r.Name] {
			v.add(key+".name", "%q is used by another role; role names must be unique", r.Name)
		}
		names[r.Name] = true
		if len(r.Verbs) == 0 {
			v.add(key+".verbs", "is empty; list some of: %s", serveVerbNames())
		}
		for j, verb := range r.Verbs {
			if _, ok := LookupServeVerb(verb); !ok {
				v.add(fmt.Sprintf("%s.verbs[%d]", key, j), "%q is not a verb; use %s", verb, serveVerbNames())
			}
		}
		if len(r.Namespaces) == 0 {
			v.add(key+".namespaces", "is empty; list namespaces, or \"*\" for all")
		}
		for j, ns := range r.Namespaces {
			if ns != "*" && !k8sname.Namespace.Valid(ns) {
				v.add(fmt.Sprintf("%s.namespaces[%d]", key, j), "%q is not a Kubernetes namespace name or \"*\"", ns)
			}
		}
		if len(r.Subjects) == 0 {
			v.add(key+".subjects", "is empty; name a {user: ...} or {group: ...}")
		}
		for j, sub := range r.Subjects {
			if (sub.User == "") == (sub.Group == "") {
				v.add(fmt.Sprintf("%s.subjects[%d]", key, j), "set exactly one of user or group")
			}
		}
	}
	if s.MaxStreams < 1 || s.MaxStreams > 100_000 {
		v.add("serve.maxStreams", "%d is out of range; use 1 to 100000 (default %d)", s.MaxStreams, DefaultMaxStreams)
	}
	if !(s.RateLimit > 0) || s.RateLimit > 1e6 {
		v.add("serve.rateLimit", "%v is out of range; requests per second per identity, above 0 (default %d)", s.RateLimit, DefaultRateLimit)
	}
	if s.RateBurst < 1 || s.RateBurst > 1_000_000 {
		v.add("serve.rateBurst", "%d is out of range; use 1 to 1000000 (default %d)", s.RateBurst, DefaultRateBurst)
	}
	checkDuration(v, "serve.indexRefresh", s.IndexRefresh, time.Second, 24*time.Hour)
}
