package service

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/remote"
)

// TestKubernetesTokensAndSubjectAccessReview runs the service against a
// real kube-apiserver: bearer tokens checked with TokenReview (audience
// enforced), decisions made by SubjectAccessReview on the virtual
// checkpoints/auditevents resources from real Roles and RoleBindings, the
// service itself acting as a service account with only the RBAC that
// deploy/ grants it.
func TestKubernetesTokensAndSubjectAccessReview(t *testing.T) {
	c := testkube.Shared(t)
	for _, ns := range []string{"payments", "other", "ir", "vault"} {
		c.CreateNamespace(t, ns)
	}
	// The service's own identity: may create TokenReviews and
	// SubjectAccessReviews, nothing else.
	c.ServiceAccount(t, "vault", "ckvault-serve")
	c.GrantCluster(t, "ckvault-serve-delegator", testkube.AuthDelegator, testkube.SA("vault", "ckvault-serve"))
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(kc, c.Token(t, "vault", "ckvault-serve", "https://kubernetes.default.svc", time.Hour)); err != nil {
		t.Fatal(err)
	}
	// alice (a service account in ir) may list, get and fetch in payments.
	for _, sa := range []string{"alice", "temp"} {
		c.ServiceAccount(t, "ir", sa)
	}
	c.Grant(t, "payments", "ir-responders", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: []string{"list", "get", "fetch"},
	}}, testkube.SA("ir", "alice"))
	// The auditors group (a certificate's O) may read the audit trail.
	c.GrantCluster(t, "ckvault-auditors", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"auditevents"}, Verbs: []string{"list"},
	}}, testkube.Group("auditors"))

	e := newEnv(t, envOptions{backend: "file", noRoles: true, kubernetes: kubernetesBlock(kc)})
	alice := c.Token(t, "ir", "alice", "vault", time.Hour)
	pay, oth := e.vaulted["payments"][0].Object, e.vaulted["other"][0].Object
	anon := e.client("")
	for _, r := range []struct {
		name, token, path string
		want              int
	}{
		{"alice lists payments", alice, "/v1/checkpoints?namespace=payments", 200},
		{"alice lists other", alice, "/v1/checkpoints?namespace=other", 403},
		{"alice fetches payments", alice, "/v1/objects/" + pay + manifest.SuffixCiphertext, 200},
		{"alice fetches other", alice, "/v1/objects/" + oth + manifest.SuffixCiphertext, 403},
		{"alice reads the audit trail", alice, "/v1/audit/records", 403},
		{"wrong audience", c.Token(t, "ir", "alice", "other", time.Hour), "/v1/checkpoints?namespace=payments", 401},
		{"garbage token", "garbage", "/v1/checkpoints?namespace=payments", 401},
	} {
		if a := e.get(anon, r.path, "Authorization", "Bearer "+r.token); a.code != r.want {
			t.Errorf("%s: %d %s, want %d", r.name, a.code, a.body, r.want)
		}
	}
	// A token whose service account is gone (revoked before it expires).
	temp := c.Token(t, "ir", "temp", "vault", time.Hour)
	if err := c.Client(t).CoreV1().ServiceAccounts("ir").Delete(t.Context(), "temp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server notices the deletion through its informer, a moment
	// later; until then it still authenticates the token (and the service
	// would cache that answer). Ask the service once the API server refuses.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		tr, err := c.Client(t).AuthenticationV1().TokenReviews().Create(t.Context(), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: temp, Audiences: []string{"vault"}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !tr.Status.Authenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the API server still authenticates a deleted service account's token after 30s")
		}
	}
	if a := e.get(anon, "/v1/checkpoints?namespace=payments", "Authorization", "Bearer "+temp); a.code != http.StatusUnauthorized {
		t.Errorf("token of a deleted service account: %d %s, want 401", a.code, a.body)
	}
	// A listing across namespaces shows alice payments only.
	if _, a := e.list(e.client(""), ""); a.code != 401 {
		t.Errorf("anonymous list: %d", a.code)
	}
	req, _ := http.NewRequest(http.MethodGet, e.url()+"/v1/checkpoints", nil)
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := anon.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l remote.CheckpointList
	if err := remote.DecodeJSON(resp.Body, &l); resp.StatusCode != 200 || err != nil || namespaces(l) != "payments,payments" {
		t.Errorf("alice's cross-namespace list: %d %v %q, want payments' two entries", resp.StatusCode, err, namespaces(l))
	}
	// Certificates are authorised by SubjectAccessReview too: carol's O is
	// auditors.
	if a := e.get(e.client("auditor"), "/v1/audit/records"); a.code != 200 {
		t.Errorf("auditor certificate reading the trail: %d %s", a.code, a.body)
	}
	if a := e.get(e.client("alice"), "/v1/checkpoints?namespace=payments"); a.code != 403 {
		t.Errorf("alice's certificate (user alice, no RoleBinding): %d, want 403", a.code)
	}
	// Every denial is in the trail, naming the service account.
	denied := e.records(audit.Filter{Actor: "token:system:serviceaccount:ir:alice", Outcome: audit.Denied})
	if len(denied) != 3 {
		t.Errorf("%d denied records for alice's token, want 3", len(denied))
	}
}
