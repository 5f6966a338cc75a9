package trigger_test

import (
	"context"
	"crypto/tls"
	"errors"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/checkpoint-vault/ckvault/internal/kubeapi"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/internal/testkubelet"
	"github.com/checkpoint-vault/ckvault/vault/trigger"
)

// TestWithAPIServer: the kubelet stand-in delegates to the real
// kube-apiserver as a kubelet in webhook mode does — bearer tokens by
// TokenReview, every request by SubjectAccessReview — so a service account
// bound to create on nodes/checkpoint may checkpoint, one with nodes/proxy
// may not (403), and an expired token of the allowed account is refused
// (401); a client certificate's user is authorised the same way. Locate
// finds the kubelet from real Pod and Node objects.
func TestWithAPIServer(t *testing.T) {
	c := kube(t)
	cs := c.Client(t)
	kc, err := kubeapi.New(c.RestConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	kl := startKubelet(t, t.TempDir(), testkubelet.Options{})
	if _, err := client(t, kl, tokAlice).Checkpoint(ctx, api, 30e9); err != nil {
		t.Fatalf("alice, bound to create on nodes/checkpoint: %v", err)
	}
	if _, err := client(t, kl, tokMallory).Checkpoint(ctx, api, 30e9); !errors.Is(err, trigger.ErrForbidden) ||
		!strings.Contains(err.Error(), "system:serviceaccount:"+kubeNS+":mallory") {
		t.Fatalf("mallory, with nodes/proxy only: %v, want ErrForbidden naming her", err)
	}
	if _, err := client(t, kl, c.ExpiredToken(t, kubeNS, "alice", testkube.APIAudience)).Checkpoint(ctx, api, 30e9); !errors.Is(err, trigger.ErrUnauthorized) {
		t.Fatalf("alice's expired token: %v, want ErrUnauthorized", err)
	}
	// A client certificate authenticates without the API server; its user
	// is authorised by it all the same.
	for user, want := range map[string]error{"carol": trigger.ErrForbidden, "alice": nil} {
		k := client(t, kl, "")
		pair, err := tls.LoadX509KeyPair(kl.ClientCert(t, t.TempDir(), user))
		if err != nil {
			t.Fatal(err)
		}
		k.TLS.Certificates = []tls.Certificate{pair}
		if _, err := k.Checkpoint(ctx, api, 30e9); !errors.Is(err, want) {
			t.Errorf("client certificate of %s: %v, want %v", user, err, want)
		}
	}

	// Locate: the pod's node, and the node's InternalIP and kubelet port.
	c.CreateNamespace(t, api.Namespace)
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "node-a"}, {Type: corev1.NodeInternalIP, Address: "10.0.0.7"}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods(api.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: api.Pod},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "server", Image: "registry.example/app:1.0"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	loc, err := trigger.Locate(ctx, kc, api, "")
	if err != nil {
		t.Fatal(err)
	}
	if loc.Node != "node-a" || loc.URL.String() != "https://10.0.0.7:"+strconv.Itoa(trigger.DefaultKubeletPort) {
		t.Errorf("Locate = %s %s, want node-a https://10.0.0.7:10250", loc.Node, loc.URL)
	}
	for _, tc := range []struct {
		t    trigger.Target
		node string
	}{
		{trigger.Target{Namespace: api.Namespace, Pod: "gone-0", Container: "server"}, ""},
		{trigger.Target{Namespace: api.Namespace, Pod: api.Pod, Container: "nope"}, ""},
		{api, "node-b"},
	} {
		if _, err := trigger.Locate(ctx, kc, tc.t, tc.node); err == nil {
			t.Errorf("Locate(%s, node %q) succeeded", tc.t, tc.node)
		}
	}
}
