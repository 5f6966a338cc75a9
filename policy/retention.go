package policy

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/k8sname"
)

// RetentionConfig is the retention: section, applied by `ckvault gc` (and
// on a schedule by `ckvault serve`):
//
//	retention:
//	  global:     {maxCount: 50, maxTotalSize: 100GiB, maxAge: 720h}
//	  namespaces: {payments: {maxCount: 10}}
//	  pods:       {payments/api-0: {maxAge: 2160h}}
//	  containers: {payments/api-0/api: {maxCount: 3}}
//	  orphanGrace: 24h
//
// Each checkpoint falls under its most specific policy (container > pod >
// namespace > global), which replaces the less specific ones whole; the
// limits of a policy hold for the set of checkpoints that fall under it.
type RetentionConfig struct {
	Global     *RetentionLimits           `yaml:"global"`
	Namespaces map[string]RetentionLimits `yaml:"namespaces"`
	// Pods are keyed NAMESPACE/POD, Containers NAMESPACE/POD/CONTAINER.
	Pods       map[string]RetentionLimits `yaml:"pods"`
	Containers map[string]RetentionLimits `yaml:"containers"`
	// OrphanGrace is how long objects without a manifest (abandoned or
	// in-flight uploads) are left alone before they are removed.
	OrphanGrace string `yaml:"orphanGrace,omitempty"`
	// Interval, when set, makes `ckvault serve` run GC this often.
	Interval string `yaml:"interval,omitempty"`
	// BypassGovernance lets scheduled runs delete versions under
	// governance retention (audited). `ckvault gc` needs its own flag.
	BypassGovernance bool `yaml:"bypassGovernance,omitempty"`
	// AccessKeyFile and SecretKeyFile are the retention role's S3
	// credentials (deploy/bucket-policies/gc.json), used for GC instead of
	// store's. The vault service runs GC (retention.interval, /v1/gc) only
	// with them: its own store credentials can only read, by design.
	AccessKeyFile string `yaml:"accessKeyFile,omitempty"`
	SecretKeyFile string `yaml:"secretKeyFile,omitempty"`
}

// HasCredentials reports whether retention has credentials of its own.
func (r *RetentionConfig) HasCredentials() bool {
	return r != nil && r.AccessKeyFile != "" && r.SecretKeyFile != ""
}

// RetentionLimits are one policy's limits; an absent limit does not apply.
type RetentionLimits struct {
	MaxCount int `yaml:"maxCount,omitempty"`
	// MaxTotalSize is a byte count with an optional unit: 500MiB, 100GiB,
	// 2TB (KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB of 1000).
	MaxTotalSize string `yaml:"maxTotalSize,omitempty"`
	// MaxAge is a Go duration of the checkpoint's age: 720h.
	MaxAge string `yaml:"maxAge,omitempty"`
}

// DefaultOrphanGrace is retention.orphanGrace when it is not set.
const DefaultOrphanGrace = "24h"

// minOrphanGrace protects uploads in flight: a large archive over a slow
// link uploads for a long time before its manifest appears.
const minOrphanGrace = time.Hour

// Limits are RetentionLimits parsed. Zero fields do not apply.
type Limits struct {
	MaxCount     int
	MaxTotalSize int64
	MaxAge       time.Duration
}

// IsZero reports a policy with no limit at all (it keeps everything).
func (l Limits) IsZero() bool { return l == Limits{} }

// Parsed returns the limits in their typed form (validated by Load).
func (r RetentionLimits) Parsed() Limits {
	size, _ := ParseSize(r.MaxTotalSize)
	return Limits{MaxCount: r.MaxCount, MaxTotalSize: size, MaxAge: mustDuration(r.MaxAge)}
}

// OrphanGraceDuration is retention.orphanGrace parsed.
func (r *RetentionConfig) OrphanGraceDuration() time.Duration {
	if r.OrphanGrace == "" {
		return mustDuration(DefaultOrphanGrace)
	}
	return mustDuration(r.OrphanGrace)
}

// IntervalDuration is retention.interval parsed; 0 when unset.
func (r *RetentionConfig) IntervalDuration() time.Duration {
	if r.Interval == "" {
		return 0
	}
	return mustDuration(r.Interval)
}

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$`)

// ParseSize parses a byte count with an optional unit (see MaxTotalSize).
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("%q is not a size; write e.g. 500MiB, 100GiB or 2TB", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is too large", s)
	}
	mult := map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m[2]]
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

func (r *RetentionConfig) validate(v *validator) {
	if r == nil {
		return
	}
	if r.Global != nil {
		r.Global.validate(v, "retention.global")
	}
	checkScoped := func(section string, m map[string]RetentionLimits, parts int, form string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			key := "retention." + section + "." + k
			seg := strings.Split(k, "/")
			ok := len(seg) == parts && k8sname.Namespace.Valid(seg[0])
			if ok && parts >= 2 {
				ok = k8sname.Pod.Valid(seg[1])
			}
			if ok && parts == 3 {
				ok = k8sname.Container.Valid(seg[2])
			}
			if !ok {
				v.add(key, "%q is not %s (lower-case Kubernetes names)", k, form)
			}
			l := m[k]
			l.validate(v, key)
		}
	}
	checkScoped("namespaces", r.Namespaces, 1, "a namespace name")
	checkScoped("pods", r.Pods, 2, "NAMESPACE/POD")
	checkScoped("containers", r.Containers, 3, "NAMESPACE/POD/CONTAINER")
	if r.OrphanGrace != "" {
		checkDuration(v, "retention.orphanGrace", r.OrphanGrace, minOrphanGrace, 10*365*24*time.Hour)
	}
	if r.Interval != "" {
		checkDuration(v, "retention.interval", r.Interval, time.Minute, 7*24*time.Hour)
	}
	if r.Global == nil && len(r.Namespaces)+len(r.Pods)+len(r.Containers) == 0 {
		v.add("retention", "has no policy; set retention.global (and narrower ones) or remove the section")
	}
	checkPath(v, "retention.accessKeyFile", r.AccessKeyFile)
	checkPath(v, "retention.secretKeyFile", r.SecretKeyFile)
	if (r.AccessKeyFile == "") != (r.SecretKeyFile == "") {
		v.add("retention.accessKeyFile", "accessKeyFile and secretKeyFile go together: set both (the retention role's S3 credentials) or neither")
	}
}

func (l *RetentionLimits) validate(v *validator, key string) {
	present := func(k string) bool { return lineOf(v.root, key+"."+k) > 0 }
	if l.MaxCount < 0 || l.MaxCount == 0 && present("maxCount") {
		v.add(key+".maxCount", "%d is out of range; keep at least 1 checkpoint, or remove the key for no count limit", l.MaxCount)
	}
	if l.MaxTotalSize != "" || present("maxTotalSize") {
		if n, err := ParseSize(l.MaxTotalSize); err != nil {
			v.add(key+".maxTotalSize", "%v", err)
		} else if n <= 0 {
			v.add(key+".maxTotalSize", "must be more than 0; remove the key for no size limit")
		}
	}
	if l.MaxAge != "" || present("maxAge") {
		checkDuration(v, key+".maxAge", l.MaxAge, time.Minute, 100*365*24*time.Hour)
	}
	if *l == (RetentionLimits{}) && !present("maxCount") {
		v.add(key, "sets no limit (maxCount, maxTotalSize or maxAge); a policy without limits keeps everything it covers — say so with a large maxAge, or remove it")
	}
}
