package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/checkpoint-vault/ckvault/internal/kubeapi"
	"github.com/checkpoint-vault/ckvault/policy"
)

// KubeConfig returns the client configuration for kubeconfig, or the
// in-cluster configuration when it is empty.
func KubeConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := kubeapi.InCluster()
		if err != nil {
			return nil, fmt.Errorf("serve.kubernetes: no kubeconfig given and not running in a cluster (%v); set serve.kubernetes.kubeconfig", err)
		}
		return c, nil
	}
	c, err := kubeapi.Load(kubeconfig, "")
	if err != nil {
		return nil, fmt.Errorf("serve.kubernetes.kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}

// kubeCallTimeout bounds one TokenReview or SubjectAccessReview. The
// client configuration sets no timeout, so an API server (or a load
// balancer in front of it) that takes a review and never answers would
// hold the request for as long as its caller waits — two minutes for a
// ckvault client, for ever for an attacker's — with no answer and no
// record. After this the review is unavailable: a recorded 503. 10 s is
// k8s.io/apiserver's delegating authenticator's and authoriser's client
// timeout.
const kubeCallTimeout = 10 * time.Second

// KubeTokenReviewer checks bearer tokens with TokenReview for Audience.
type KubeTokenReviewer struct {
	Client   *kubeapi.Client
	Audience string
}

// NewKubeTokenReviewer builds a reviewer from a client configuration.
func NewKubeTokenReviewer(cfg *rest.Config, audience string) (*KubeTokenReviewer, error) {
	c, err := kubeapi.New(cfg)
	if err != nil {
		return nil, err
	}
	return &KubeTokenReviewer{Client: c, Audience: audience}, nil
}

func (k *KubeTokenReviewer) Review(ctx context.Context, token string) (Identity, bool, string, error) {
	ctx, cancel := context.WithTimeout(ctx, kubeCallTimeout)
	defer cancel()
	tr := new(authenticationv1.TokenReview)
	err := k.Client.Create(ctx, "/apis/authentication.k8s.io/v1/tokenreviews", &authenticationv1.TokenReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
		Spec:     authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{k.Audience}},
	}, tr)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return Identity{}, false, "", fmt.Errorf("TokenReview: the API server did not answer within %s: %w", kubeCallTimeout, err)
	}
	if err != nil {
		return Identity{}, false, "", fmt.Errorf("TokenReview: %w (the service needs create on tokenreviews.authentication.k8s.io)", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return Identity{}, false, reason, nil
	}
	// A reviewer that does not support audiences answers without them;
	// accept only a review that confirms ours.
	if len(st.Audiences) > 0 && !contains(st.Audiences, k.Audience) {
		return Identity{}, false, fmt.Sprintf("token audiences %v do not include %q", st.Audiences, k.Audience), nil
	}
	return Identity{Kind: "token", User: st.User.Username, Groups: st.User.Groups, UID: st.User.UID}, true, "", nil
}

// SARAuthorizer asks Kubernetes with a SubjectAccessReview on the virtual
// resource of the verb (policy.ServeVerbs) in group policy.KubeGroup.
type SARAuthorizer struct {
	Client *kubeapi.Client
}

// NewSARAuthorizer builds the authoriser from a client configuration.
func NewSARAuthorizer(cfg *rest.Config) (*SARAuthorizer, error) {
	c, err := kubeapi.New(cfg)
	if err != nil {
		return nil, err
	}
	return &SARAuthorizer{Client: c}, nil
}

func (a *SARAuthorizer) Authorize(ctx context.Context, id Identity, verb policy.ServeVerb, namespace string) (Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, kubeCallTimeout)
	defer cancel()
	r := new(authorizationv1.SubjectAccessReview)
	err := a.Client.Create(ctx, "/apis/authorization.k8s.io/v1/subjectaccessreviews", &authorizationv1.SubjectAccessReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "authorization.k8s.io/v1", Kind: "SubjectAccessReview"},
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: id.User, Groups: id.Groups, UID: id.UID,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace, Verb: verb.KubeVerb, Group: policy.KubeGroup, Resource: verb.Resource,
			},
		},
	}, r)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return Decision{}, fmt.Errorf("SubjectAccessReview: the API server did not answer within %s: %w", kubeCallTimeout, err)
	}
	if err != nil {
		return Decision{}, fmt.Errorf("SubjectAccessReview: %w (the service needs create on subjectaccessreviews.authorization.k8s.io)", err)
	}
	if r.Status.Allowed && !r.Status.Denied {
		return Decision{Allowed: true, Reason: r.Status.Reason}, nil
	}
	reason := r.Status.Reason
	if r.Status.EvaluationError != "" {
		reason += " (" + r.Status.EvaluationError + ")"
	}
	if reason == "" {
		reason = "no RBAC rule grants it"
	}
	return Decision{Reason: reason}, nil
}
