package service

import (
	"net/http"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/checkpoint-vault/ckvault/internal/testkube"
)

// TestCachedTokenEndsAtItsExpiry: a token the API server accepted is
// remembered for up to two minutes (tokenAllowTTL), but never past its own
// expiry — an expired token is refused however recently it was reviewed.
// The token here is one the real API server issued, re-signed with the
// cluster's service-account key so that its exp is 58 s ago: the API
// server still accepts it for 2 s (it allows 60 s of clock skew past exp)
// and then refuses it; the service must not go on accepting it from its
// cache for two minutes. (The API server issues no token shorter than ten
// minutes.)
func TestCachedTokenEndsAtItsExpiry(t *testing.T) {
	c := testkube.Shared(t)
	c.CreateNamespace(t, "payments")
	tns, kube := delegatingService(t, c, "")
	c.ServiceAccount(t, tns, "brief")
	c.Grant(t, "payments", tns+"-brief", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: []string{"list"},
	}}, testkube.SA(tns, "brief"))
	e := newEnv(t, envOptions{backend: "file", noRoles: true, kubernetes: kube})

	const leeway = 60 * time.Second // the API server's, past exp
	exp := time.Now().Add(2*time.Second - leeway)
	brief := c.Resign(t, c.Token(t, tns, "brief", "vault", time.Hour), func(claims map[string]any) {
		claims["exp"] = exp.Unix()
	})
	anon := e.client("")
	if a := e.get(anon, "/v1/checkpoints?namespace=payments", "Authorization", "Bearer "+brief); a.code != http.StatusOK {
		t.Fatalf("a valid token: %d %s, want 200", a.code, a.body)
	}
	// Past the leeway, and past the API server's own 10 s cache of the
	// acceptance (its token authenticator caches successes for 10 s).
	time.Sleep(time.Until(exp.Add(leeway)) + 11*time.Second)
	a := e.get(anon, "/v1/checkpoints?namespace=payments", "Authorization", "Bearer "+brief)
	if a.code != http.StatusUnauthorized {
		t.Fatalf("the same token after its expiry, reviewed about 13 s before: %d, want 401 (the cached acceptance outlived the token)", a.code)
	}
}
