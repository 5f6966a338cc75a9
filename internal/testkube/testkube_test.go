package testkube

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestTokenReviewAndSubjectAccessReview is the round trip the vault service
// depends on: a service account's audience-bound token is authenticated by
// TokenReview only for its audience, and SubjectAccessReview on the virtual
// checkpoints resource follows a Role and RoleBinding.
func TestTokenReviewAndSubjectAccessReview(t *testing.T) {
	c := Shared(t)
	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "alice")
	tok := c.Token(t, ns, "alice", "vault", time.Hour)

	// The admin kubeconfig works as a client-go configuration.
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	review := func(token, audience string) *authenticationv1.TokenReviewStatus {
		t.Helper()
		tr, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{audience}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenReview: %v", err)
		}
		return &tr.Status
	}
	st := review(tok, "vault")
	wantUser := "system:serviceaccount:" + ns + ":alice"
	if !st.Authenticated || st.User.Username != wantUser {
		t.Fatalf("token for audience vault: authenticated=%v user=%q error=%q, want %s", st.Authenticated, st.User.Username, st.Error, wantUser)
	}
	if !contains(st.User.Groups, "system:serviceaccounts:"+ns) {
		t.Errorf("groups %v lack system:serviceaccounts:%s", st.User.Groups, ns)
	}
	if st := review(tok, "other"); st.Authenticated || !strings.Contains(st.Error, "audience") {
		t.Errorf("token for audience vault reviewed for audience other: authenticated=%v error=%q", st.Authenticated, st.Error)
	}
	if st := review("garbage", "vault"); st.Authenticated {
		t.Errorf("garbage token authenticated as %q", st.User.Username)
	}

	sar := func() *authorizationv1.SubjectAccessReviewStatus {
		t.Helper()
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User: st.User.Username, Groups: st.User.Groups,
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: ns, Verb: "fetch", Group: "vault.ckvault.dev", Resource: "checkpoints",
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview: %v", err)
		}
		return &r.Status
	}
	if s := sar(); s.Allowed {
		t.Fatalf("fetch allowed before any RBAC: %+v", s)
	}
	c.Grant(t, ns, "fetcher", []rbacv1.PolicyRule{{
		APIGroups: []string{"vault.ckvault.dev"}, Resources: []string{"checkpoints"}, Verbs: []string{"fetch"},
	}}, SA(ns, "alice"))
	if s := sar(); !s.Allowed || !strings.Contains(s.Reason, "fetcher") {
		t.Fatalf("fetch after RoleBinding fetcher: allowed=%v reason=%q", s.Allowed, s.Reason)
	}

	// The service account's own token reaches the API server as that
	// account (RestConfigFor), and RBAC applies to it.
	own, err := kubernetes.NewForConfig(c.RestConfigFor(c.Token(t, ns, "alice", "https://kubernetes.default.svc", time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("alice listing secrets: err=%v, want forbidden", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestExpiredToken: a token re-signed with its claims unchanged still
// authenticates (so Resign reproduces the API server's signature), and the
// ExpiredToken of the same account does not, for expiry.
func TestExpiredToken(t *testing.T) {
	c := Shared(t)
	ns := c.Namespace(t)
	c.ServiceAccount(t, ns, "bob")
	cs := c.Client(t)
	review := func(token string) authenticationv1.TokenReviewStatus {
		t.Helper()
		tr, err := cs.AuthenticationV1().TokenReviews().Create(context.Background(), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: token},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenReview: %v", err)
		}
		return tr.Status
	}
	resigned := c.Resign(t, c.Token(t, ns, "bob", APIAudience, time.Hour), nil)
	if st := review(resigned); !st.Authenticated || st.User.Username != "system:serviceaccount:"+ns+":bob" {
		t.Fatalf("re-signed token: authenticated=%v user=%q error=%q", st.Authenticated, st.User.Username, st.Error)
	}
	if st := review(c.ExpiredToken(t, ns, "bob", APIAudience)); st.Authenticated || !strings.Contains(st.Error, "expired") {
		t.Fatalf("expired token: authenticated=%v error=%q, want an expiry error", st.Authenticated, st.Error)
	}
}
