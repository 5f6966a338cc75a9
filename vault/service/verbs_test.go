package service

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// verbRoles: alice may fetch, rita may restore, pete may pin, gary may run
// retention — each in payments only (gc is vault-wide: namespace "*").
const verbRoles = `  roles:
    - {name: fetchers, verbs: [list, get, fetch], namespaces: [payments], subjects: [{user: alice}]}
    - {name: restorers, verbs: [list, get, restore], namespaces: [payments], subjects: [{user: rita}]}
    - {name: pinners, verbs: [pin], namespaces: [payments], subjects: [{user: pete}]}
    - {name: retention, verbs: [gc], namespaces: ["*"], subjects: [{user: gary}]}
`

// newVerbEnv is an env whose roles are verbRoles, with client
// certificates for rita, pete and gary besides the usual ones.
func newVerbEnv(t *testing.T, backend, extra string) *env {
	t.Helper()
	e := newEnv(t, envOptions{backend: backend, noRoles: true, serveExtra: verbRoles + extra})
	for _, n := range []string{"rita", "pete", "gary"} {
		cf, kf, err := e.ca.IssueClient(e.dir, n, n, "")
		if err != nil {
			t.Fatal(err)
		}
		e.certs[n] = [2]string{cf, kf}
	}
	return e
}

// send makes one request with an optional JSON body.
func (e *env) send(c *http.Client, method, path string, body []byte) answer {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.url()+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return answer{code: -1, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, b, resp.Header}
}

// okReport is a well-formed report of a push.
func okReport() remote.RestoreReport {
	d := "sha256:" + strings.Repeat("ab", 32)
	return remote.RestoreReport{Outcome: remote.RestoreOK, Registry: "registry.example:5000", Repository: "forensics/api",
		Image: "registry.example:5000/forensics/api@" + d, ImageDigest: d, ManifestDigest: d, LayerDigest: d, Tag: "x", Platform: "linux/amd64"}
}

// TestRestoreVerbTable: the ciphertext read for a restore and the restore
// report need the verb restore, a plain read of the ciphertext needs fetch;
// neither implies the other; every decision is in the trail.
func TestRestoreVerbTable(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newVerbEnv(t, backend, "")
			pay, oth := e.vaulted["payments"][0].Object, e.vaulted["other"][0].Object
			rep := mustJSON(okReport())
			type req struct {
				name, method, path string
				body               []byte
				verb, ns           string
				action             string // of the allowed request's records
			}
			reqs := []req{
				{"fetch payments", "GET", "/v1/objects/" + pay + manifest.SuffixCiphertext, nil, "fetch", "payments", "fetched"},
				{"fetch other", "GET", "/v1/objects/" + oth + manifest.SuffixCiphertext, nil, "fetch", "other", ""},
				{"restore-read payments", "GET", "/v1/objects/" + pay + manifest.SuffixCiphertext + "?purpose=restore", nil, "restore", "payments", ActionRestoreFetched},
				{"restore-read other", "GET", "/v1/objects/" + oth + manifest.SuffixCiphertext + "?purpose=restore", nil, "restore", "other", ""},
				{"restore-head payments", "HEAD", "/v1/objects/" + pay + manifest.SuffixCiphertext + "?purpose=restore", nil, "restore", "payments", ActionRestoreFetched},
				{"report payments", "POST", "/v1/restores/" + pay, rep, "restore", "payments", ActionRestored},
				{"report other", "POST", "/v1/restores/" + oth, rep, "restore", "other", ""},
			}
			allow := map[string]map[string]bool{
				"alice":  {"fetch payments": true},
				"rita":   {"restore-read payments": true, "restore-head payments": true, "report payments": true},
				"nobody": {},
			}
			for id, allowed := range allow {
				c := e.client(id)
				for _, r := range reqs {
					a := e.send(c, r.method, r.path, r.body)
					want := http.StatusForbidden
					if allowed[r.name] {
						want = map[string]int{"GET": 200, "HEAD": 200, "POST": 201}[r.method]
					}
					if a.code != want {
						t.Errorf("%s %s: %d %s, want %d", id, r.name, a.code, a.body, want)
						continue
					}
					if want == http.StatusForbidden && r.method != "HEAD" { // HEAD answers carry no body
						var body remote.Error
						if err := json.Unmarshal(a.body, &body); err != nil || body.Verb != r.verb || body.Namespace != r.ns {
							t.Errorf("%s %s: 403 %s does not name verb %q, namespace %q", id, r.name, a.body, r.verb, r.ns)
						}
					}
				}
				actor := "cert:" + id
				denied := e.records(audit.Filter{Actor: actor, Outcome: audit.Denied})
				if len(denied) != len(reqs)-len(allowed) {
					t.Errorf("%s: %d denied records, want %d", id, len(denied), len(reqs)-len(allowed))
				}
				for _, r := range reqs {
					if !allowed[r.name] {
						continue
					}
					subj := strings.TrimPrefix(strings.TrimPrefix(r.path, "/v1/objects/"), "/v1/restores/")
					subj, _, _ = strings.Cut(subj, "?")
					recs := e.records(audit.Filter{Actor: actor, Action: r.action, Subject: subj})
					if r.method == "HEAD" || r.action == ActionRestoreFetched {
						// GET and HEAD share the subject: two requests.
						if len(recs) != 4 {
							t.Errorf("%s %s: %d %s records, want intent+outcome for GET and HEAD", id, r.name, len(recs), r.action)
						}
						continue
					}
					if len(recs) != 2 || recs[0].Detail["phase"] != "intent" || recs[1].Detail["phase"] != "done" {
						t.Errorf("%s %s: records %+v, want intent and outcome of action %s", id, r.name, recs, r.action)
					}
				}
			}
			// The report's record carries the push, and the read's the purpose.
			recs := e.records(audit.Filter{Action: ActionRestored, Subject: pay})
			if len(recs) != 2 || recs[1].Detail["imageDigest"] != okReport().ImageDigest || recs[1].Detail["registry"] != "registry.example:5000" ||
				recs[1].Detail["repository"] != "forensics/api" || recs[1].Detail["status"] != "201" || recs[1].Outcome != audit.OK {
				t.Errorf("restored records: %+v", recs)
			}
			reads := e.records(audit.Filter{Action: ActionRestoreFetched, Subject: pay + manifest.SuffixCiphertext})
			if len(reads) == 0 || reads[0].Detail["purpose"] != "restore" {
				t.Errorf("restore-fetched records: %+v", reads)
			}
			// purpose=restore on a manifest is still a get (rita has it).
			if a := e.send(e.client("rita"), "GET", "/v1/objects/"+pay+manifest.SuffixManifest+"?purpose=restore", nil); a.code != 200 {
				t.Errorf("rita's manifest read for a restore: %d %s", a.code, a.body)
			}
		})
	}
}

// TestRestoreReportRefusals: malformed, oversized and unknown reports are
// refused without a record; a reported failure is recorded as one.
func TestRestoreReportRefusals(t *testing.T) {
	e := newVerbEnv(t, "file", "")
	rita := e.client("rita")
	pay := e.vaulted["payments"][0].Object
	bad := func(mut func(*remote.RestoreReport)) []byte {
		r := okReport()
		mut(&r)
		return mustJSON(r)
	}
	for name, c := range map[string]struct {
		body []byte
		want int
	}{
		"not json":          {[]byte("{"), 400},
		"unknown field":     {[]byte(`{"outcome":"ok","extra":1}`), 400},
		"two objects":       {append(mustJSON(okReport()), []byte(`{}`)...), 400},
		"bad outcome":       {bad(func(r *remote.RestoreReport) { r.Outcome = "maybe" }), 400},
		"bad digest":        {bad(func(r *remote.RestoreReport) { r.ImageDigest = "sha256:xyz" }), 400},
		"image mismatch":    {bad(func(r *remote.RestoreReport) { r.Image = "evil.example/other@" + r.ImageDigest }), 400},
		"ok without where":  {bad(func(r *remote.RestoreReport) { r.Image, r.Registry, r.Repository = "", "", "" }), 400},
		"control character": {bad(func(r *remote.RestoreReport) { r.Tag = "a\nb" }), 400},
		"bad repository":    {bad(func(r *remote.RestoreReport) { r.Repository = "Forensics" }), 400},
		"too large":         {bad(func(r *remote.RestoreReport) { r.Reason = strings.Repeat("x", 8<<10) }), 413},
	} {
		if a := e.send(rita, "POST", "/v1/restores/"+pay, c.body); a.code != c.want {
			t.Errorf("%s: %d %s, want %d", name, a.code, a.body, c.want)
		}
	}
	if recs := e.records(audit.Filter{Action: ActionRestored}); len(recs) != 0 {
		t.Errorf("refused reports left %d records", len(recs))
	}
	// A checkpoint the vault does not hold.
	unknown := strings.Replace(pay, "payments/", "payments/ghost-", 1)
	if a := e.send(rita, "POST", "/v1/restores/"+unknown, mustJSON(okReport())); a.code != 404 {
		t.Errorf("report for an unknown checkpoint: %d %s", a.code, a.body)
	}
	// A failed restore is recorded with the reported outcome.
	fail := remote.RestoreReport{Outcome: remote.RestoreError, Reason: "pushing: 401 unauthorized"}
	if a := e.send(rita, "POST", "/v1/restores/"+pay, mustJSON(fail)); a.code != 201 {
		t.Fatalf("failure report: %d %s", a.code, a.body)
	}
	recs := e.records(audit.Filter{Action: ActionRestored, Subject: pay})
	if len(recs) != 2 || recs[1].Outcome != audit.Error || recs[1].Detail["reason"] != fail.Reason || recs[1].Detail["reported"] != "error" {
		t.Errorf("failure report records: %+v", recs)
	}
	// A purpose other than restore is refused.
	if a := e.send(e.client("alice"), "GET", "/v1/objects/"+pay+manifest.SuffixCiphertext+"?purpose=fetch", nil); a.code != 400 {
		t.Errorf("purpose=fetch: %d", a.code)
	}
}
