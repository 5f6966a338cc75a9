package service

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/checkpoint-vault/ckvault/internal/testkube"
)

// countingReviewer is the real TokenReview client, counting reviews.
type countingReviewer struct {
	next TokenReviewer
	n    atomic.Int32
}

func (c *countingReviewer) Review(ctx context.Context, token string) (Identity, bool, string, error) {
	c.n.Add(1)
	return c.next.Review(ctx, token)
}

// TestRedteamTokenFloodCostsFewReviews: every bearer token the service has
// not seen costs a TokenReview against the API server. An outsider with
// no credentials sending a stream of distinct made-up tokens must not be
// able to turn each request into a review (load on the API server, and
// throttling of the service's own reviews there, so real callers get
// 503): reviews of unseen tokens are rate limited per source address,
// like every other unauthenticated request; a token seen before costs
// nothing, and real callers keep working.
func TestRedteamTokenFloodCostsFewReviews(t *testing.T) {
	c := testkube.Shared(t)
	for _, ns := range []string{"payments", "ir", "vault"} {
		c.CreateNamespace(t, ns)
	}
	c.ServiceAccount(t, "vault", "rt-serve")
	c.GrantCluster(t, "rt-serve-delegator", testkube.AuthDelegator, testkube.SA("vault", "rt-serve"))
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(kc, c.Token(t, "vault", "rt-serve", "https://kubernetes.default.svc", time.Hour)); err != nil {
		t.Fatal(err)
	}
	c.ServiceAccount(t, "ir", "rt-alice")
	c.Grant(t, "payments", "rt-responders", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: []string{"list", "get", "fetch"},
	}}, testkube.SA("ir", "rt-alice"))

	e := newEnv(t, envOptions{backend: "file", noRoles: true, noStart: true, kubernetes: kubernetesBlock(kc)})
	rc, err := KubeConfig(kc)
	must(t, err)
	real, err := NewKubeTokenReviewer(rc, "vault")
	must(t, err)
	cr := &countingReviewer{next: real}
	e.start(Setup{Tokens: cr})

	anon := e.client("")
	const flood = 150
	limited := 0
	for i := range flood {
		a := e.get(anon, "/v1/checkpoints?namespace=payments", "Authorization", fmt.Sprintf("Bearer made-up-token-%d", i))
		switch a.code {
		case http.StatusUnauthorized:
		case http.StatusTooManyRequests:
			limited++
		default:
			t.Fatalf("made-up token %d: %d %s", i, a.code, a.body)
		}
	}
	if n := cr.n.Load(); n > 2*int32(e.cfg.Serve.RateBurst) {
		t.Errorf("%d requests with made-up tokens from one address cost %d TokenReviews, want at most about the burst (%d)", flood, n, e.cfg.Serve.RateBurst)
	}
	if limited == 0 {
		t.Errorf("none of %d requests with made-up tokens was rate limited", flood)
	}
	// A real caller, from another address's point of view the same
	// loopback: once its token is reviewed it is served from the cache.
	time.Sleep(3 * time.Second) // let the flooded address's bucket refill a little
	alice := c.Token(t, "ir", "rt-alice", "vault", time.Hour)
	for range 5 {
		if a := e.get(anon, "/v1/checkpoints?namespace=payments", "Authorization", "Bearer "+alice); a.code != http.StatusOK {
			t.Fatalf("alice after the flood: %d %s", a.code, a.body)
		}
	}
}
