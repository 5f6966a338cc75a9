package service

import (
	"net/url"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// FuzzParseRestoreReport: any body is refused or gives a report whose
// every field is bounded and free of control characters, with a known
// outcome — what the trail may record.
func FuzzParseRestoreReport(f *testing.F) {
	f.Add(string(mustJSON(okReport())))
	f.Add(`{"outcome":"error","reason":"push failed"}`)
	f.Add(`{"outcome":"ok","ociLayout":"/tmp/x","imageDigest":"sha256:` + strings.Repeat("0", 64) + `"}`)
	f.Add(`{"outcome":"ok"} {}`)
	f.Add(`{"outcome":"denied","check":"manifest signature","extra":true}`)
	f.Fuzz(func(t *testing.T, body string) {
		r, err := ParseRestoreReport([]byte(body))
		if err != nil {
			return
		}
		switch r.Outcome {
		case remote.RestoreOK, remote.RestoreError, remote.RestoreDenied:
		default:
			t.Fatalf("accepted outcome %q", r.Outcome)
		}
		for k, v := range r.Detail() {
			if len(v) > remote.MaxReportField || strings.ContainsFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
				t.Fatalf("accepted %s %q", k, v)
			}
		}
		if r.Outcome == remote.RestoreOK && r.ImageDigest == "" {
			t.Fatalf("accepted an ok report without an image digest: %+v", r)
		}
		// A report the client builds from it round-trips.
		if back := remote.RestoreReportOf(r.Outcome, r.Detail()); back != r {
			t.Fatalf("round trip: %+v != %+v", back, r)
		}
	})
}

// FuzzParseObjectQuery: only the empty query and purpose=restore pass.
func FuzzParseObjectQuery(f *testing.F) {
	for _, s := range []string{"", "purpose=restore", "purpose=fetch", "purpose=restore&purpose=restore", "x=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		p, err := ParseObjectQuery(v)
		if err != nil {
			return
		}
		if p != "" && p != remote.PurposeRestore || len(v) > 1 || p == "" && len(v) != 0 {
			t.Fatalf("ParseObjectQuery(%q) = %q", raw, p)
		}
	})
}

// FuzzRestoreReportOf: whatever an audit record's detail holds, the report
// the client builds from it is one the service accepts as far as field
// bounds go.
func FuzzRestoreReportOf(f *testing.F) {
	f.Add("pushing failed:\n\x1b[31m" + strings.Repeat("é", 600))
	f.Fuzz(func(t *testing.T, reason string) {
		r := remote.RestoreReportOf(remote.RestoreError, map[string]string{"reason": reason})
		if _, err := ParseRestoreReport(mustJSON(r)); err != nil {
			t.Fatalf("the service refuses the client's report of reason %q: %v", reason, err)
		}
	})
}
