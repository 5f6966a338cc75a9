package policy

import (
	"strings"
	"testing"
	"time"
)

func TestRetentionParse(t *testing.T) {
	src := minimal + `retention:
  global:     {maxCount: 50, maxTotalSize: 100GiB, maxAge: 720h}
  namespaces: {payments: {maxCount: 10}}
  pods:       {payments/api-0: {maxAge: 2160h}}
  containers: {payments/api-0/api: {maxCount: 3, maxTotalSize: 1500000}}
  orphanGrace: 36h
`
	cfg, err := Parse([]byte(src), "c.yaml", "/etc/ckvault")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Retention
	if got := r.Global.Parsed(); got != (Limits{MaxCount: 50, MaxTotalSize: 100 << 30, MaxAge: 720 * time.Hour}) {
		t.Errorf("global = %+v", got)
	}
	if got := r.Namespaces["payments"].Parsed(); got != (Limits{MaxCount: 10}) {
		t.Errorf("namespace payments = %+v", got)
	}
	if got := r.Pods["payments/api-0"].Parsed(); got != (Limits{MaxAge: 2160 * time.Hour}) {
		t.Errorf("pod = %+v", got)
	}
	if got := r.Containers["payments/api-0/api"].Parsed(); got != (Limits{MaxCount: 3, MaxTotalSize: 1500000}) {
		t.Errorf("container = %+v", got)
	}
	if r.OrphanGraceDuration() != 36*time.Hour || r.IntervalDuration() != 0 || r.BypassGovernance {
		t.Errorf("orphanGrace %v interval %v bypass %v", r.OrphanGraceDuration(), r.IntervalDuration(), r.BypassGovernance)
	}
	cfg, err = Parse([]byte(minimal+"retention: {global: {maxAge: 1h}}\n"), "c.yaml", "/etc/ckvault")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retention.OrphanGraceDuration() != 24*time.Hour {
		t.Errorf("default orphanGrace = %v", cfg.Retention.OrphanGraceDuration())
	}
}

func TestRetentionErrors(t *testing.T) {
	for _, c := range []struct{ yaml, want string }{
		{"retention: {global: {maxCount: 0}}", "retention.global.maxCount: 0 is out of range"},
		{"retention: {global: {maxCount: -2}}", "retention.global.maxCount: -2 is out of range"},
		{"retention: {global: {maxTotalSize: 10 parsecs}}", "retention.global.maxTotalSize: \"10 parsecs\" is not a size"},
		{"retention: {global: {maxTotalSize: 0GiB}}", "must be more than 0"},
		{"retention: {global: {maxTotalSize: 99999999999TiB}}", "too large"},
		{"retention: {global: {maxAge: 30d}}", "retention.global.maxAge: \"30d\" is not a duration"},
		{"retention: {global: {maxAge: 1s}}", "out of range"},
		{"retention: {global: {}}", "retention.global: sets no limit"},
		{"retention: {global: {maxCuont: 3}}", `did you mean "maxCount"`},
		{"retention: {namespaces: {Payments: {maxCount: 1}}}", `"Payments" is not a namespace name`},
		{"retention: {pods: {payments: {maxCount: 1}}}", `"payments" is not NAMESPACE/POD`},
		{"retention: {containers: {a/b: {maxCount: 1}}}", `"a/b" is not NAMESPACE/POD/CONTAINER`},
		{"retention: {containers: {a/b/C_: {maxCount: 1}}}", "is not NAMESPACE/POD/CONTAINER"},
		{"retention: {global: {maxAge: 1h}, orphanGrace: 5m}", "retention.orphanGrace: 5m0s is out of range"},
		{"retention: {global: {maxAge: 1h}, interval: soon}", "retention.interval"},
		{"retention: {orphanGrace: 24h}", "retention: has no policy"},
	} {
		_, err := Parse([]byte(minimal+c.yaml+"\n"), "c.yaml", "/etc/ckvault")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error = %v, want it to mention %q", c.yaml, err, c.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"": 0, "12": 12, "12B": 12, "1KB": 1000, "1KiB": 1024, "3MiB": 3 << 20, "2GB": 2e9, "100GiB": 100 << 30, "1TiB": 1 << 40} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"1.5GiB", "-1", "GiB", "1 gib", "1e9"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) succeeded", s)
		}
	}
}
