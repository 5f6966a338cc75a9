package kubeapi_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/checkpoint-vault/ckvault/internal/kubeapi"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
)

// TestAgainstAPIServer runs the client's three kinds of answer against a
// real kube-apiserver: an object read, a review created, and the API
// server's Status errors (404 and 403) carried with code and message.
func TestAgainstAPIServer(t *testing.T) {
	c := testkube.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.WriteKubeconfig(kubeconfig, c.AdminToken); err != nil {
		t.Fatal(err)
	}
	cfg, err := kubeapi.Load(kubeconfig, "")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kubeapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}

	ns := c.Namespace(t)
	var got corev1.Namespace
	if err := admin.Get(ctx, "/api/v1/namespaces/"+ns, &got); err != nil || got.Name != ns {
		t.Fatalf("Get namespace %s = %q, %v", ns, got.Name, err)
	}

	err = admin.Get(ctx, "/api/v1/namespaces/"+ns+"/pods/nope", new(corev1.Pod))
	if !kubeapi.IsNotFound(err) {
		t.Fatalf("Get of a missing pod: %v, want a 404 StatusError", err)
	}

	c.ServiceAccount(t, ns, "alice")
	tok := c.Token(t, ns, "alice", "vault", time.Hour)
	var tr authenticationv1.TokenReview
	if err := admin.Create(ctx, "/apis/authentication.k8s.io/v1/tokenreviews", &authenticationv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Spec:     authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{"vault"}},
	}, &tr); err != nil {
		t.Fatal(err)
	}
	if want := "system:serviceaccount:" + ns + ":alice"; !tr.Status.Authenticated || tr.Status.User.Username != want {
		t.Fatalf("TokenReview = %+v, want authenticated as %s", tr.Status, want)
	}

	// alice may do nothing: the API server's 403 arrives as a StatusError
	// naming the code and the missing permission.
	// (A token for the API server's own audience, its issuer here.)
	alice, err := kubeapi.New(c.RestConfigFor(c.Token(t, ns, "alice", "https://kubernetes.default.svc", time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	err = alice.Get(ctx, "/api/v1/nodes/node-a", new(corev1.Node))
	var se *kubeapi.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || se.Reason != metav1.StatusReasonForbidden || se.Message == "" {
		t.Fatalf("Get as an unprivileged user: %#v, want a 403 StatusError with the server's message", err)
	}
	if kubeapi.IsNotFound(err) {
		t.Error("a 403 counts as not found")
	}

	if _, err := kubeapi.Load(filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Error("Load of a missing kubeconfig succeeded")
	}
}
