package service

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/testkube"
)

// delegatingService sets up what `ckvault serve` needs from the shared API
// server, under names of the test's own: a namespace, a service account
// "serve" in it granted testkube.AuthDelegator, and a kubeconfig with that
// account's token. via, when not empty, replaces the API server's address
// in the kubeconfig (a gate the test controls). It returns the namespace
// and the serve.kubernetes block for envOptions.kubernetes.
func delegatingService(t *testing.T, c *testkube.Cluster, via string) (tns, kubernetes string) {
	t.Helper()
	tns = c.Namespace(t)
	c.ServiceAccount(t, tns, "serve")
	c.GrantCluster(t, tns+"-serve-delegator", testkube.AuthDelegator, testkube.SA(tns, "serve"))
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, c.WriteKubeconfig(kc, c.Token(t, tns, "serve", testkube.APIAudience, time.Hour)))
	if via != "" {
		b, err := os.ReadFile(kc)
		must(t, err)
		must(t, os.WriteFile(kc, bytes.ReplaceAll(b, []byte(c.URL), []byte(via)), 0o600))
	}
	return tns, kubernetesBlock(kc)
}

// kubernetesBlock is a serve.kubernetes block: tokens reviewed for the
// audience "vault", decisions by SubjectAccessReview, through kubeconfig kc.
func kubernetesBlock(kc string) string {
	return fmt.Sprintf("  kubernetes:\n    kubeconfig: %s\n    audience: vault\n    authorize: true\n", kc)
}
