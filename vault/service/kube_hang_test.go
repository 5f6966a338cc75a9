package service

import (
	"net/http"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
)

// TestKubernetesHangingIsRecorded503: an API server that takes a
// TokenReview or a SubjectAccessReview and never answers is unavailable
// like one that refuses connections: after kubeCallTimeout the caller gets
// the recorded 503, instead of the request waiting as long as the caller
// does (a ckvault client waits two minutes for headers, an attacker's for
// ever) with its handler, connection and review held meanwhile.
func TestKubernetesHangingIsRecorded503(t *testing.T) {
	c := testkube.Shared(t)
	c.CreateNamespace(t, "payments")
	gate := newAPIGate(t, c)
	tns, kube := delegatingService(t, c, gate.url())
	c.ServiceAccount(t, tns, "responder")
	certUser := tns + "-responder"
	c.Grant(t, "payments", tns+"-responders", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: []string{"list"},
	}}, testkube.SA(tns, "responder"), testkube.User(certUser))

	e := newEnv(t, envOptions{backend: "file", noRoles: true,
		kubernetes: kube})
	cf, kf, err := e.ca.IssueClient(e.dir, "hang-responder", certUser, "")
	must(t, err)
	e.certs["hang-responder"] = [2]string{cf, kf}
	tok := c.Token(t, tns, "responder", "vault", time.Hour)

	gate.set(t, "hang")
	// e.client gives up after 30 s, more than kubeCallTimeout.
	cases := []struct {
		what, actor, want string
		get               func() answer
	}{
		{"an unreviewed token", "unauthenticated:127.0.0.1", "TokenReview unavailable", func() answer {
			return e.get(e.client(""), "/v1/checkpoints?namespace=payments", "Authorization", "Bearer "+tok)
		}},
		{"a certificate needing a decision", "cert:" + certUser, "SubjectAccessReview", func() answer {
			return e.get(e.client("hang-responder"), "/v1/checkpoints?namespace=payments")
		}},
	}
	for _, tc := range cases {
		a := tc.get()
		if a.code != http.StatusServiceUnavailable || a.hdr.Get("Retry-After") == "" {
			t.Errorf("%s, API server hanging: %d %s, want a 503 with Retry-After once the review times out", tc.what, a.code, a.body)
		}
		recs := e.records(audit.Filter{Actor: tc.actor})
		if len(recs) == 0 {
			t.Errorf("%s: no record", tc.what)
			continue
		}
		r := recs[len(recs)-1]
		if r.Detail["status"] != "503" || !strings.Contains(r.Detail["reason"], tc.want) {
			t.Errorf("%s: record %+v, want status 503 and a reason naming %s", tc.what, r, tc.want)
		}
	}
}
