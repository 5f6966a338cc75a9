package trigger_test

import (
	"context"
	"errors"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/checkpoint-vault/ckvault/internal/kubeapi"
	"github.com/checkpoint-vault/ckvault/internal/testkube"
	"github.com/checkpoint-vault/ckvault/internal/testkubelet"
	"github.com/checkpoint-vault/ckvault/vault/trigger"
)

// TestWithAPIServer runs against a real kube-apiserver: the kubelet
// stand-in authorises through SubjectAccessReview, so only a subject bound
// to create on nodes/checkpoint may checkpoint (nodes/proxy is not
// enough), and Locate finds the kubelet from real Pod and Node objects.
func TestWithAPIServer(t *testing.T) {
	c := testkube.New(t)
	cs := c.Client(t)
	kc, err := kubeapi.New(c.RestConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c.GrantCluster(t, "ckvault-checkpoint", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/checkpoint"}, Verbs: []string{"create"}}},
		testkube.User("alice"))
	c.GrantCluster(t, "node-proxy", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"*"}}},
		testkube.User("mallory"))

	kl := startKubelet(t, t.TempDir(), testkubelet.Options{Authorizer: testkubelet.SubjectAccessReview{Client: cs}})
	if _, err := client(t, kl, tokAlice).Checkpoint(ctx, api, 30e9); err != nil {
		t.Fatalf("alice, bound to create on nodes/checkpoint: %v", err)
	}
	if _, err := client(t, kl, tokMallory).Checkpoint(ctx, api, 30e9); !errors.Is(err, trigger.ErrForbidden) {
		t.Fatalf("mallory, with nodes/proxy only: %v, want ErrForbidden", err)
	}

	// Locate: the pod's node, and the node's InternalIP and kubelet port.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: api.Namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
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
