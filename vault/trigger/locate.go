package trigger

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"github.com/checkpoint-vault/ckvault/internal/kubeapi"
)

// DefaultKubeletPort is the kubelet's authenticated port.
const DefaultKubeletPort = 10250

// Located is where a pod's kubelet is.
type Located struct {
	Node string
	URL  *url.URL
}

// Locate finds the node a pod runs on (from the Pod) and its kubelet's
// address (from the Node: InternalIP, else ExternalIP, else Hostname, and
// the port the kubelet reports in status.daemonEndpoints). It needs get on
// pods in the namespace and on nodes. node, when not empty, is used
// instead of the pod's, but must match it if the pod can be read.
func Locate(ctx context.Context, kube *kubeapi.Client, t Target, node string) (Located, error) {
	pod := new(corev1.Pod)
	err := kube.Get(ctx, "/api/v1/namespaces/"+url.PathEscape(t.Namespace)+"/pods/"+url.PathEscape(t.Pod), pod)
	switch {
	case err == nil:
		if pod.Spec.NodeName == "" {
			return Located{}, fmt.Errorf("pod %s/%s is not scheduled to a node yet: there is nothing to checkpoint", t.Namespace, t.Pod)
		}
		if node != "" && node != pod.Spec.NodeName {
			return Located{}, fmt.Errorf("pod %s/%s runs on node %s, not %s: drop --node or name the pod's node", t.Namespace, t.Pod, pod.Spec.NodeName, node)
		}
		node = pod.Spec.NodeName
		if !hasContainer(pod, t.Container) {
			return Located{}, fmt.Errorf("pod %s/%s has no container %q (it has %v)", t.Namespace, t.Pod, t.Container, containerNames(pod))
		}
	case kubeapi.IsNotFound(err):
		return Located{}, fmt.Errorf("pod %s/%s does not exist", t.Namespace, t.Pod)
	case node == "":
		return Located{}, fmt.Errorf("reading pod %s/%s to find its node: %w; pass --node NODE (or --kubelet URL) if you may not read pods", t.Namespace, t.Pod, err)
	}
	n := new(corev1.Node)
	if err := kube.Get(ctx, "/api/v1/nodes/"+url.PathEscape(node), n); err != nil {
		return Located{}, fmt.Errorf("reading node %s for its kubelet's address: %w; pass --kubelet https://HOST:10250 if you may not read nodes", node, err)
	}
	host := ""
	for _, want := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP, corev1.NodeHostName} {
		for _, a := range n.Status.Addresses {
			if a.Type == want && host == "" {
				host = a.Address
			}
		}
	}
	if host == "" {
		return Located{}, fmt.Errorf("node %s reports no address; pass --kubelet https://HOST:10250", node)
	}
	port := int(n.Status.DaemonEndpoints.KubeletEndpoint.Port)
	if port == 0 {
		port = DefaultKubeletPort
	}
	return Located{Node: node, URL: &url.URL{Scheme: "https", Host: net.JoinHostPort(host, strconv.Itoa(port))}}, nil
}

func hasContainer(p *corev1.Pod, name string) bool {
	for _, c := range containerNames(p) {
		if c == name {
			return true
		}
	}
	return false
}

func containerNames(p *corev1.Pod) []string {
	var out []string
	for _, c := range p.Spec.Containers {
		out = append(out, c.Name)
	}
	for _, c := range p.Spec.InitContainers {
		out = append(out, c.Name)
	}
	for _, c := range p.Spec.EphemeralContainers {
		out = append(out, c.Name)
	}
	return out
}
