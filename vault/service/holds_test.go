package service

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/gc"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// held reports the legal hold of each of the checkpoint's objects.
func (e *env) held(base string) (on, off int) {
	e.t.Helper()
	for _, k := range manifest.ObjectsFor(base).All() {
		oi, err := e.st.Stat(context.Background(), k)
		if err != nil {
			continue
		}
		if oi.LegalHold {
			on++
		} else {
			off++
		}
	}
	return on, off
}

// TestPinVerbTable: PUT/DELETE /v1/holds need the verb pin in the
// checkpoint's namespace; they set and lift the legal hold on every object
// (on MinIO with Object Lock, and the file store), and each change is
// recorded (intent and outcome, with the caller's source) by the same code
// `ckvault pin` runs.
func TestPinVerbTable(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			e := newVerbEnv(t, backend, "")
			pay, oth := e.vaulted["payments"][0].Object, e.vaulted["other"][0].Object
			for _, id := range []string{"alice", "rita", "gary", "nobody", "pete"} {
				c := e.client(id)
				for _, r := range []struct {
					method, base, ns string
				}{{"PUT", pay, "payments"}, {"PUT", oth, "other"}, {"DELETE", pay, "payments"}, {"DELETE", oth, "other"}} {
					a := e.send(c, r.method, "/v1/holds/"+r.base, nil)
					want := http.StatusForbidden
					if id == "pete" && r.ns == "payments" {
						want = http.StatusOK
					}
					if a.code != want {
						t.Errorf("%s %s %s: %d %s, want %d", id, r.method, r.base, a.code, a.body, want)
						continue
					}
					if want == http.StatusForbidden {
						var body remote.Error
						if err := json.Unmarshal(a.body, &body); err != nil || body.Verb != "pin" || body.Namespace != r.ns {
							t.Errorf("%s %s %s: 403 %s does not name verb pin, namespace %s", id, r.method, r.base, a.body, r.ns)
						}
						continue
					}
					var rec remote.Recorded
					if err := json.Unmarshal(a.body, &rec); err != nil || rec.Subject != pay || rec.Objects != 6 || rec.Record == 0 {
						t.Errorf("%s %s: answer %s", id, r.method, a.body)
					}
					on, off := e.held(pay)
					if r.method == "PUT" && (on != 6 || off != 0) || r.method == "DELETE" && (on != 0 || off != 6) {
						t.Errorf("after %s: %d objects held, %d not", r.method, on, off)
					}
				}
				if denied := e.records(audit.Filter{Actor: "cert:" + id, Outcome: audit.Denied}); id != "pete" && len(denied) != 4 || id == "pete" && len(denied) != 2 {
					t.Errorf("%s: %d denied records", id, len(denied))
				}
			}
			for _, action := range []string{gc.ActionPinned, gc.ActionUnpin} {
				recs := e.records(audit.Filter{Action: action, Subject: pay})
				if len(recs) != 2 || recs[0].Actor != "cert:pete" || recs[0].Detail["phase"] != "intent" || recs[1].Detail["objects"] != "6" ||
					recs[1].Outcome != audit.OK || recs[0].Detail["source"] == "" || recs[1].Detail["auth"] != "cert" {
					t.Errorf("%s records: %+v", action, recs)
				}
			}
			if on, _ := e.held(oth); on != 0 {
				t.Errorf("refused pins held %d objects of %s", on, oth)
			}
			// A short id resolves among the checkpoints pete may pin.
			short := pay[strings.LastIndexByte(pay, '-')+1:]
			if a := e.send(e.client("pete"), "PUT", "/v1/holds/"+short, nil); a.code != 200 {
				t.Errorf("pin by short id: %d %s", a.code, a.body)
			}
			if a := e.send(e.client("pete"), "DELETE", "/v1/holds/"+short, nil); a.code != 200 {
				t.Errorf("unpin by short id: %d %s", a.code, a.body)
			}
			// A checkpoint the store does not hold.
			ghost := strings.Replace(pay, "payments/", "payments/ghost-", 1)
			if a := e.send(e.client("pete"), "PUT", "/v1/holds/"+ghost, nil); a.code != http.StatusNotFound {
				t.Errorf("pin of a missing checkpoint: %d %s", a.code, a.body)
			}
		})
	}
}

// TestPinFailsClosed: when the intent cannot be recorded, no hold changes
// and the answer is 503.
func TestPinFailsClosed(t *testing.T) {
	e := newVerbEnv(t, "file", "")
	pay := e.vaulted["payments"][0].Object
	if err := e.srv.Trail.Close(); err != nil {
		t.Fatal(err)
	}
	a := e.send(e.client("pete"), "PUT", "/v1/holds/"+pay, nil)
	if a.code != http.StatusServiceUnavailable || a.hdr.Get("Retry-After") == "" {
		t.Errorf("pin with a closed trail: %d %s, want 503 with Retry-After", a.code, a.body)
	}
	if on, _ := e.held(pay); on != 0 {
		t.Errorf("pin with a closed trail held %d objects", on)
	}
}
