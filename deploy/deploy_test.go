// Package deploy holds no code: its tests make the files under deploy/
// real. Every kustomize overlay builds (with sigs.k8s.io/kustomize/api, as
// `kubectl apply -k` does), every object decodes strictly into its
// k8s.io/api type (an unknown or misspelt field fails), the embedded
// configurations load with policy.Parse, the service and retention pods
// pass Pod Security "restricted" (the admission library's own checks), and
// RBAC and NetworkPolicies are the least described in their comments.
package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	psapi "k8s.io/pod-security-admission/api"
	pspolicy "k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/checkpoint-vault/ckvault/policy"
)

var overlays = []string{"node", "service", "gc", "production"}

// object is one built resource, decoded.
type object struct {
	kind, namespace, name string
	yaml                  []byte
	obj                   runtime.Object
}

func (o object) id() string { return o.kind + " " + o.namespace + "/" + o.name }

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme,
		rbacv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// build runs kustomize on an overlay and strictly decodes every object.
func build(t *testing.T, overlay string) []object {
	t.Helper()
	return buildDir(t, "kubernetes/overlays/"+overlay)
}

// buildDir is build of the kustomization in dir.
func buildDir(t *testing.T, dir string) []object {
	t.Helper()
	overlay := filepath.Base(dir)
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build overlays/%s: %v", overlay, err)
	}
	s := scheme(t)
	dec := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, s, s, kjson.SerializerOptions{Yaml: true, Strict: true})
	var out []object
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		o := object{kind: r.GetKind(), namespace: r.GetNamespace(), name: r.GetName(), yaml: y}
		obj, _, err := dec.Decode(y, nil, nil)
		if err != nil {
			t.Errorf("overlays/%s: %s does not decode strictly into its k8s.io/api type: %v", overlay, o.id(), err)
			continue
		}
		o.obj = obj
		out = append(out, o)
	}
	return out
}

func find[T runtime.Object](objs []object, kind, ns, name string) (T, bool) {
	var zero T
	for _, o := range objs {
		if o.kind == kind && o.namespace == ns && o.name == name {
			v, ok := o.obj.(T)
			return v, ok
		}
	}
	return zero, false
}

func ids(objs []object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.id())
	}
	sort.Strings(out)
	return out
}

// TestOverlaysBuild: every overlay builds, decodes strictly, and holds the
// objects its role needs; production is the union of the three.
func TestOverlaysBuild(t *testing.T) {
	common := []string{
		"ClusterRole /ckvault-auditor", "ClusterRole /ckvault-checkpoint-trigger", "ClusterRole /ckvault-responder",
		"ClusterRole /ckvault-retention-admin", "ClusterRoleBinding /ckvault-checkpoint-trigger",
		"Namespace /ckvault", "Namespace /ckvault-system",
	}
	want := map[string][]string{
		"node": {"ConfigMap ckvault-system/ckvault-config", "DaemonSet ckvault-system/ckvault",
			"NetworkPolicy ckvault-system/ckvault-node", "ServiceAccount ckvault-system/ckvault-node"},
		"service": {"ClusterRole /ckvault-service", "ClusterRoleBinding /ckvault-service", "ConfigMap ckvault/ckvault-service-config",
			"NetworkPolicy ckvault/ckvault-service", "Service ckvault/ckvault", "ServiceAccount ckvault/ckvault-service",
			"StatefulSet ckvault/ckvault-service"},
		"gc": {"ConfigMap ckvault/ckvault-gc-config", "CronJob ckvault/ckvault-gc", "NetworkPolicy ckvault/ckvault-gc",
			"PersistentVolumeClaim ckvault/ckvault-gc-state", "ServiceAccount ckvault/ckvault-gc"},
	}
	want["production"] = slices.Concat(want["node"], want["service"], want["gc"])
	for _, o := range overlays {
		objs := build(t, o)
		w := sorted(slices.Concat(common, want[o]))
		if got := ids(objs); strings.Join(got, "\n") != strings.Join(w, "\n") {
			t.Errorf("overlays/%s builds:\n  %s\nwant:\n  %s", o, strings.Join(got, "\n  "), strings.Join(w, "\n  "))
		}
	}
	prod := build(t, "production")
	for _, o := range prod {
		if img := images(o); len(img) > 0 && img[0] != "ghcr.io/checkpoint-vault/ckvault:0.1.0" {
			t.Errorf("production %s runs image %q, want the pinned 0.1.0", o.id(), img[0])
		}
	}
}

func sorted(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }

func podSpecOf(o object) (*metav1.ObjectMeta, *corev1.PodSpec) {
	switch v := o.obj.(type) {
	case *appsv1.DaemonSet:
		return &v.Spec.Template.ObjectMeta, &v.Spec.Template.Spec
	case *appsv1.StatefulSet:
		return &v.Spec.Template.ObjectMeta, &v.Spec.Template.Spec
	case *batchv1.CronJob:
		return &v.Spec.JobTemplate.Spec.Template.ObjectMeta, &v.Spec.JobTemplate.Spec.Template.Spec
	}
	return nil, nil
}

func images(o object) []string {
	_, ps := podSpecOf(o)
	if ps == nil {
		return nil
	}
	var out []string
	for _, c := range ps.Containers {
		out = append(out, c.Image)
	}
	return out
}

// TestEmbeddedConfigs: every ckvault.yaml in a ConfigMap loads with the
// same strict loader the pods use, and says what its role needs.
func TestEmbeddedConfigs(t *testing.T) {
	t.Setenv(policy.NodeEnv, "node-from-env")
	objs := build(t, "production")
	n := 0
	for _, o := range objs {
		cm, ok := o.obj.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		data, ok := cm.Data["ckvault.yaml"]
		if !ok {
			t.Errorf("%s has no ckvault.yaml", o.id())
			continue
		}
		n++
		cfg, err := policy.Parse([]byte(data), o.id()+" ckvault.yaml", "/etc/ckvault")
		if err != nil {
			t.Errorf("%s: %v", o.id(), err)
			continue
		}
		switch o.name {
		case "ckvault-config":
			if cfg.Node != "node-from-env" || cfg.Store.ObjectLock == nil || cfg.Signing.Key != "/etc/ckvault/signing/signing.key" {
				t.Errorf("node config: node %q, objectLock %v, key %q", cfg.Node, cfg.Store.ObjectLock, cfg.Signing.Key)
			}
		case "ckvault-gc-config":
			if cfg.Retention == nil || cfg.Retention.Global == nil || cfg.Node != "ckvault-gc" {
				t.Errorf("gc config has no global retention policy")
			}
			// gc signs its exported trail with a key of its own, which
			// it (and every reader) trusts for audit heads only.
			if cfg.Signing.Key == "" || len(cfg.Signing.PublicKeys) != 0 || len(cfg.Signing.AuditKeys) != 1 ||
				filepath.Dir(cfg.Signing.AuditKeys[0]) != filepath.Dir(cfg.Signing.Key) {
				t.Errorf("gc config: signing key %q, publicKeys %v, auditKeys %v; want its own key's public half in auditKeys only",
					cfg.Signing.Key, cfg.Signing.PublicKeys, cfg.Signing.AuditKeys)
			}
		case "ckvault-service-config":
			if cfg.Node != "node-from-env" || cfg.Serve == nil || cfg.Serve.Kubernetes == nil || !cfg.Serve.Kubernetes.Authorize {
				t.Errorf("service config: node %q, serve %+v; want SubjectAccessReview authorisation", cfg.Node, cfg.Serve)
			}
		}
	}
	if n != 3 {
		t.Errorf("%d embedded configs, want 3 (node, service, gc)", n)
	}
}

// TestPodSecurity: the service and retention pods pass Pod Security
// "restricted" as the admission plugin evaluates it, in namespaces that
// enforce it; the node daemon, which cannot, is alone in the privileged
// namespace with only the host access and capabilities its comments
// justify.
func TestPodSecurity(t *testing.T) {
	objs := build(t, "production")
	eval, err := pspolicy.NewEvaluator(pspolicy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	restricted := psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()}
	nsLevel := map[string]string{}
	for _, o := range objs {
		if ns, ok := o.obj.(*corev1.Namespace); ok {
			nsLevel[ns.Name] = ns.Labels[psapi.EnforceLevelLabel]
		}
	}
	workloads := 0
	for _, o := range objs {
		meta, spec := podSpecOf(o)
		if spec == nil {
			continue
		}
		workloads++
		results := eval.EvaluatePod(restricted, meta, spec)
		var fails []string
		for _, r := range results {
			if !r.Allowed {
				fails = append(fails, r.ForbiddenReason+": "+r.ForbiddenDetail)
			}
		}
		if o.kind == "DaemonSet" {
			if nsLevel[o.namespace] != "privileged" {
				t.Errorf("%s runs in namespace %s enforcing %q; it needs the privileged level", o.id(), o.namespace, nsLevel[o.namespace])
			}
			checkNodeDaemon(t, o.obj.(*appsv1.DaemonSet))
			continue
		}
		if ss, ok := o.obj.(*appsv1.StatefulSet); ok {
			checkService(t, ss)
		}
		if nsLevel[o.namespace] != "restricted" {
			t.Errorf("%s runs in namespace %s enforcing %q, want restricted", o.id(), o.namespace, nsLevel[o.namespace])
		}
		if len(fails) > 0 {
			t.Errorf("%s violates Pod Security restricted:\n  %s", o.id(), strings.Join(fails, "\n  "))
		}
	}
	if workloads != 3 {
		t.Errorf("%d workloads, want 3", workloads)
	}
}

func checkNodeDaemon(t *testing.T, ds *appsv1.DaemonSet) {
	ps := ds.Spec.Template.Spec
	var hostPaths []string
	for _, v := range ps.Volumes {
		if v.HostPath != nil {
			hostPaths = append(hostPaths, v.HostPath.Path)
		}
	}
	if fmt.Sprint(sorted(hostPaths)) != "[/var/lib/ckvault /var/lib/kubelet/checkpoints]" {
		t.Errorf("DaemonSet hostPath volumes = %v, want only the checkpoints and state directories", hostPaths)
	}
	if ps.HostNetwork || ps.HostPID || ps.HostIPC {
		t.Error("DaemonSet shares a host namespace")
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("DaemonSet mounts a service account token it never uses")
	}
	c := ps.Containers[0].SecurityContext
	if c == nil || c.Capabilities == nil || fmt.Sprint(c.Capabilities.Drop) != "[ALL]" ||
		fmt.Sprint(sorted(capStrings(c.Capabilities.Add))) != "[DAC_OVERRIDE DAC_READ_SEARCH FOWNER LEASE]" {
		t.Errorf("DaemonSet capabilities = %+v, want drop ALL, add only LEASE DAC_READ_SEARCH DAC_OVERRIDE FOWNER", c)
	}
	if c.Privileged != nil && *c.Privileged || c.AllowPrivilegeEscalation == nil || *c.AllowPrivilegeEscalation ||
		c.ReadOnlyRootFilesystem == nil || !*c.ReadOnlyRootFilesystem {
		t.Error("DaemonSet container is privileged, may escalate or writes its root filesystem")
	}
}

// checkService: at least two replicas, each with its own state volume and
// its own audit trail named after its pod (one trail per writer: two
// replicas appending to one name would fork its hash chain).
func checkService(t *testing.T, ss *appsv1.StatefulSet) {
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas < 2 {
		t.Errorf("service runs %v replicas, want at least 2", ss.Spec.Replicas)
	}
	if len(ss.Spec.VolumeClaimTemplates) != 1 || ss.Spec.VolumeClaimTemplates[0].Name != "state" {
		t.Errorf("service state volumes = %+v, want one claim template \"state\" per replica", ss.Spec.VolumeClaimTemplates)
	}
	node := ""
	for _, e := range ss.Spec.Template.Spec.Containers[0].Env {
		if e.Name == policy.NodeEnv && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			node = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if node != "metadata.name" {
		t.Errorf("service %s comes from %q, want the pod's name (metadata.name)", policy.NodeEnv, node)
	}
}

func capStrings(cs []corev1.Capability) []string {
	var out []string
	for _, c := range cs {
		out = append(out, string(c))
	}
	return out
}

// TestLeastRBAC: the only API permissions are the trigger's create on
// nodes/checkpoint, the service's TokenReview and SubjectAccessReview, and
// the virtual checkpoint verbs; no wildcard, no nodes/proxy, no secrets.
func TestLeastRBAC(t *testing.T) {
	objs := build(t, "production")
	want := map[string]string{
		"ckvault-checkpoint-trigger": "[/nodes/checkpoint:create] [/nodes:get]",
		"ckvault-service":            "[authentication.k8s.io/tokenreviews:create] [authorization.k8s.io/subjectaccessreviews:create]",
		"ckvault-responder":          "[vault.ckvault.dev/checkpoints:list,get,fetch,restore]",
		"ckvault-auditor":            "[vault.ckvault.dev/auditevents:list]",
		"ckvault-retention-admin":    "[vault.ckvault.dev/checkpoints:pin,gc]",
	}
	seen := 0
	for _, o := range objs {
		switch r := o.obj.(type) {
		case *rbacv1.ClusterRole:
			seen++
			var rules []string
			for _, rule := range r.Rules {
				for _, g := range rule.APIGroups {
					for _, res := range rule.Resources {
						rules = append(rules, fmt.Sprintf("[%s/%s:%s]", g, res, strings.Join(rule.Verbs, ",")))
					}
				}
				if len(rule.NonResourceURLs) > 0 || len(rule.ResourceNames) > 0 {
					t.Errorf("%s: unexpected rule %+v", o.id(), rule)
				}
			}
			if got := strings.Join(rules, " "); got != want[r.Name] {
				t.Errorf("%s grants %s, want %s", o.id(), got, want[r.Name])
			}
		case *rbacv1.Role:
			t.Errorf("unexpected Role %s", o.id())
		case *corev1.ServiceAccount:
			if o.name != "ckvault-service" && (r.AutomountServiceAccountToken == nil || *r.AutomountServiceAccountToken) {
				t.Errorf("%s mounts a token though it needs no API access", o.id())
			}
		}
	}
	if seen != len(want) {
		t.Errorf("%d ClusterRoles, want %d", seen, len(want))
	}
	if crb, ok := find[*rbacv1.ClusterRoleBinding](objs, "ClusterRoleBinding", "", "ckvault-service"); !ok ||
		len(crb.Subjects) != 1 || crb.Subjects[0].Kind != "ServiceAccount" || crb.Subjects[0].Name != "ckvault-service" {
		t.Errorf("the service's ClusterRoleBinding does not name exactly its ServiceAccount")
	}
}

// TestNetworkPolicies: every workload is selected by a policy that
// restricts both directions; nodes and gc may reach only the store and
// DNS; the service only the store, the API server and DNS.
func TestNetworkPolicies(t *testing.T) {
	objs := build(t, "production")
	for _, o := range objs {
		meta, _ := podSpecOf(o)
		if meta == nil {
			continue
		}
		var np *networkingv1.NetworkPolicy
		for _, p := range objs {
			if n, ok := p.obj.(*networkingv1.NetworkPolicy); ok && p.namespace == o.namespace {
				sel, err := metav1.LabelSelectorAsSelector(&n.Spec.PodSelector)
				if err != nil {
					t.Fatal(err)
				}
				if sel.Matches(labelSet(meta.Labels)) {
					np = n
				}
			}
		}
		if np == nil {
			t.Errorf("%s is selected by no NetworkPolicy", o.id())
			continue
		}
		if fmt.Sprint(np.Spec.PolicyTypes) != "[Ingress Egress]" {
			t.Errorf("%s: policy types %v", np.Name, np.Spec.PolicyTypes)
		}
		var dests []string
		for _, e := range np.Spec.Egress {
			for _, to := range e.To {
				switch {
				case to.IPBlock != nil:
					if len(dests) > 0 && dests[len(dests)-1] == "apiserver" {
						continue // one destination, several addresses
					}
					dests = append(dests, "apiserver")
				case to.PodSelector != nil && to.PodSelector.MatchLabels["app.kubernetes.io/name"] == "minio":
					dests = append(dests, "store")
				case to.PodSelector != nil && to.PodSelector.MatchLabels["k8s-app"] == "kube-dns":
					dests = append(dests, "dns")
				default:
					dests = append(dests, "other")
				}
			}
		}
		want := "[store dns]"
		if o.kind == "StatefulSet" {
			want = "[store apiserver dns]"
		}
		if fmt.Sprint(dests) != want {
			t.Errorf("%s may reach %v, want %s", o.id(), dests, want)
		}
	}
}

type labelSet map[string]string

func (l labelSet) Has(k string) bool              { _, ok := l[k]; return ok }
func (l labelSet) Get(k string) string            { return l[k] }
func (l labelSet) Lookup(k string) (string, bool) { v, ok := l[k]; return v, ok }

// TestAPIServerAddresses: the API server's addresses are set in one place,
// the overlay's api-server.yaml, and reach the service's NetworkPolicy
// rule for the API server's ports (and nothing else); the settings object
// itself is not applied.
func TestAPIServerAddresses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kubernetes")
	if err := os.CopyFS(dir, os.DirFS("kubernetes")); err != nil {
		t.Fatal(err)
	}
	for _, overlay := range []string{"service", "production"} {
		p := filepath.Join(dir, "overlays", overlay, "api-server.yaml")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		set := strings.Replace(string(b), "  - ipBlock: {cidr: 192.0.2.10/32}\n",
			"  - ipBlock: {cidr: 10.20.0.11/32}\n  - ipBlock: {cidr: 10.20.0.12/32}\n", 1)
		if set == string(b) {
			t.Fatalf("overlays/%s/api-server.yaml no longer holds the placeholder address this test replaces", overlay)
		}
		if err := os.WriteFile(p, []byte(set), 0o600); err != nil {
			t.Fatal(err)
		}
		objs := buildDir(t, filepath.Join(dir, "overlays", overlay))
		np, ok := find[*networkingv1.NetworkPolicy](objs, "NetworkPolicy", "ckvault", "ckvault-service")
		if !ok {
			t.Fatalf("overlays/%s: no NetworkPolicy ckvault/ckvault-service", overlay)
		}
		var got []string
		for _, e := range np.Spec.Egress {
			var cidrs, ports []string
			for _, to := range e.To {
				if to.IPBlock != nil {
					cidrs = append(cidrs, to.IPBlock.CIDR)
				}
			}
			for _, p := range e.Ports {
				ports = append(ports, p.Port.String())
			}
			if len(cidrs) > 0 {
				got = append(got, fmt.Sprintf("%v→%v", cidrs, ports))
			}
		}
		if want := "[[10.20.0.11/32 10.20.0.12/32]→[443 6443]]"; fmt.Sprint(got) != want {
			t.Errorf("overlays/%s: the service may reach %v by address, want %s", overlay, got, want)
		}
		for _, o := range objs {
			if o.kind == "ApiServerAddresses" {
				t.Errorf("overlays/%s emits %s, a local-config object", overlay, o.id())
			}
		}
	}
}
