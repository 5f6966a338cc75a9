// Package kubeapi calls the few Kubernetes API endpoints ckvault needs
// (TokenReview, SubjectAccessReview, reading a Pod and a Node) with
// client-go's configuration and transport — kubeconfig or in-cluster
// config, client certificates, tokens, exec plugins — but without
// client-go's typed clientsets.
//
// Why not the clientsets: importing any of them links
// k8s.io/client-go/kubernetes/scheme, which registers every API group of
// Kubernetes when the program starts. ckvault is one binary, so that start-up
// cost (about 14 MiB of resident memory) landed in every process, the node
// daemon's included, whose whole budget is 64 MiB. The requests here are
// four plain JSON calls; the k8s.io/api types describe their bodies.
package kubeapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// maxResponse bounds what is read of one answer: the objects read here are
// a few KiB; a Pod with many containers stays far below this.
const maxResponse = 4 << 20

// Client calls one API server.
type Client struct {
	base *url.URL
	hc   *http.Client
}

// New returns a client for the configuration.
func New(cfg *rest.Config) (*Client, error) {
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes API server %q: %w", cfg.Host, err)
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", base.Host, err)
	}
	return &Client{base: base, hc: hc}, nil
}

// Load returns the configuration of kubeconfig (with kubeContext, when not
// empty). An empty kubeconfig means $KUBECONFIG, then ~/.kube/config,
// then the in-cluster configuration, as kubectl looks for it.
func Load(kubeconfig, kubeContext string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w", err)
	}
	return c, nil
}

// InCluster returns the configuration of the pod's service account.
func InCluster() (*rest.Config, error) { return rest.InClusterConfig() }

// StatusError is an answer other than 2xx, with the API server's Status.
type StatusError struct {
	Code    int
	Reason  metav1.StatusReason
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	if e.Reason != "" {
		return fmt.Sprintf("%s (%d %s)", msg, e.Code, e.Reason)
	}
	return fmt.Sprintf("%s (%d)", msg, e.Code)
}

// IsNotFound reports whether err is the API server's 404.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Get reads the object at the API path (for example
// /api/v1/namespaces/NS/pods/NAME) into out.
func (c *Client) Get(ctx context.Context, apiPath string, out any) error {
	return c.do(ctx, http.MethodGet, apiPath, nil, out)
}

// Create posts in to the API path and decodes the created object into out.
// Reviews (TokenReview, SubjectAccessReview) are created this way.
func (c *Client) Create(ctx context.Context, apiPath string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, apiPath, body, out)
}

func (c *Client) do(ctx context.Context, method, apiPath string, body []byte, out any) error {
	u := *c.base
	u.Path = path.Join(c.base.Path, apiPath)
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, apiPath, err)
	}
	if len(b) > maxResponse {
		return fmt.Errorf("%s %s: the answer is larger than %d bytes", method, apiPath, maxResponse)
	}
	if resp.StatusCode/100 != 2 {
		se := &StatusError{Code: resp.StatusCode}
		var st metav1.Status
		if json.Unmarshal(b, &st) == nil && st.Kind == "Status" {
			se.Reason, se.Message = st.Reason, st.Message
		} else {
			se.Message = strings.TrimSpace(string(b[:min(len(b), 200)]))
		}
		return se
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, apiPath, err)
	}
	return nil
}
