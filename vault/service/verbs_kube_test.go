package service

import (
	"bytes"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
)

// TestVerbsThroughSubjectAccessReview: with serve.kubernetes.authorize the
// verbs restore, pin and gc are decided by SubjectAccessReview against a
// real kube-apiserver, from real Roles and ClusterRoles on
// checkpoints.vault.ckvault.dev (gc cluster-wide), each allowed in its
// namespace only and every refusal recorded.
func TestVerbsThroughSubjectAccessReview(t *testing.T) {
	c := testkube.Shared(t)
	const vaultNS, irNS = "svcverbs-vault", "svcverbs-ir"
	for _, ns := range []string{"payments", "other", vaultNS, irNS} {
		c.CreateNamespace(t, ns)
	}
	c.ServiceAccount(t, vaultNS, "ckvault-serve")
	c.GrantCluster(t, "svcverbs-serve-delegator", testkube.AuthDelegator, testkube.SA(vaultNS, "ckvault-serve"))
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(kc, c.Token(t, vaultNS, "ckvault-serve", "https://kubernetes.default.svc", time.Hour)); err != nil {
		t.Fatal(err)
	}
	rule := func(verbs ...string) []rbacv1.PolicyRule {
		return []rbacv1.PolicyRule{{APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: verbs}}
	}
	for _, sa := range []string{"restorer", "pinner", "retention", "fetcher"} {
		c.ServiceAccount(t, irNS, sa)
	}
	c.Grant(t, "payments", "svcverbs-restorers", rule("restore"), testkube.SA(irNS, "restorer"))
	c.Grant(t, "payments", "svcverbs-pinners", rule("pin"), testkube.SA(irNS, "pinner"))
	c.Grant(t, "payments", "svcverbs-fetchers", rule("fetch"), testkube.SA(irNS, "fetcher"))
	c.GrantCluster(t, "svcverbs-retention", rule("gc"), testkube.SA(irNS, "retention"))

	e := newEnv(t, envOptions{backend: "file", noRoles: true, kubernetes: kubernetesBlock(kc)})
	e.restartWith(t, e.st, nil, "no retention credentials in this test")
	pay, oth := e.vaulted["payments"][0].Object, e.vaulted["other"][0].Object
	report := mustJSON(okReport())
	type req struct {
		name, method, path string
		body               []byte
		ok                 int
	}
	reqs := []req{
		{"restore-read payments", "GET", "/v1/objects/" + pay + manifest.SuffixCiphertext + "?purpose=restore", nil, 200},
		{"restore-read other", "GET", "/v1/objects/" + oth + manifest.SuffixCiphertext + "?purpose=restore", nil, 0},
		{"fetch payments", "GET", "/v1/objects/" + pay + manifest.SuffixCiphertext, nil, 200},
		{"report payments", "POST", "/v1/restores/" + pay, report, 201},
		{"report other", "POST", "/v1/restores/" + oth, report, 0},
		{"pin payments", "PUT", "/v1/holds/" + pay, nil, 200},
		{"pin other", "PUT", "/v1/holds/" + oth, nil, 0},
		{"unpin payments", "DELETE", "/v1/holds/" + pay, nil, 200},
		// Authorised, then 501: this service holds no retention credentials.
		{"gc plan", "GET", "/v1/gc/plan", nil, http.StatusNotImplemented},
	}
	allow := map[string]map[string]bool{
		"restorer":  {"restore-read payments": true, "report payments": true},
		"pinner":    {"pin payments": true, "unpin payments": true},
		"retention": {"gc plan": true},
		"fetcher":   {"fetch payments": true},
	}
	anon := e.client("")
	for sa, allowed := range allow {
		tok := c.Token(t, irNS, sa, "vault", time.Hour)
		for _, r := range reqs {
			req, _ := http.NewRequest(r.method, e.url()+r.path, bytesReader(r.body))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := anon.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := http.StatusForbidden
			if allowed[r.name] {
				want = r.ok
			}
			if resp.StatusCode != want {
				t.Errorf("%s %s: %d, want %d", sa, r.name, resp.StatusCode, want)
			}
		}
		denied := e.records(audit.Filter{Actor: "token:system:serviceaccount:" + irNS + ":" + sa, Outcome: audit.Denied})
		if len(denied) != len(reqs)-len(allowed) {
			t.Errorf("%s: %d denied records, want %d", sa, len(denied), len(reqs)-len(allowed))
		}
	}
}

func bytesReader(b []byte) io.Reader {
	if b == nil {
		return nil
	}
	return bytes.NewReader(b)
}
