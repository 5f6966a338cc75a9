package deploy

import (
	"context"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/checkpoint-vault/ckvault/internal/testkube"
)

// warnings collects the API server's warnings (Pod Security "warn" mode
// answers a workload that would violate its namespace's level with one).
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// TestApplyToAPIServer creates every object of the production overlay in a
// real kube-apiserver (etcd + kube-apiserver, internal/testkube): the API
// server's own validation and admission (Pod Security among them) accept
// each, with no warning.
func TestApplyToAPIServer(t *testing.T) {
	c := testkube.New(t)
	cfg := c.RestConfig()
	w := &warnings{}
	cfg.WarningHandler = w
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	objs := build(t, "production")
	// Namespaces first: everything else lives in one.
	for _, pass := range []bool{true, false} {
		for _, o := range objs {
			if (o.kind == "Namespace") != pass {
				continue
			}
			if err := create(ctx, cs, o); err != nil {
				t.Errorf("the API server refuses %s: %v", o.id(), err)
			}
			if ws := w.take(); len(ws) > 0 {
				t.Errorf("the API server warns about %s:\n  %s", o.id(), strings.Join(ws, "\n  "))
			}
		}
	}
}

func create(ctx context.Context, cs kubernetes.Interface, o object) error {
	opts := metav1.CreateOptions{FieldValidation: "Strict"}
	var err error
	switch v := o.obj.(type) {
	case *corev1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(ctx, v, opts)
	case *corev1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(v.Namespace).Create(ctx, v, opts)
	case *corev1.ConfigMap:
		_, err = cs.CoreV1().ConfigMaps(v.Namespace).Create(ctx, v, opts)
	case *corev1.Service:
		_, err = cs.CoreV1().Services(v.Namespace).Create(ctx, v, opts)
	case *corev1.PersistentVolumeClaim:
		_, err = cs.CoreV1().PersistentVolumeClaims(v.Namespace).Create(ctx, v, opts)
	case *appsv1.DaemonSet:
		_, err = cs.AppsV1().DaemonSets(v.Namespace).Create(ctx, v, opts)
	case *appsv1.StatefulSet:
		_, err = cs.AppsV1().StatefulSets(v.Namespace).Create(ctx, v, opts)
	case *batchv1.CronJob:
		_, err = cs.BatchV1().CronJobs(v.Namespace).Create(ctx, v, opts)
	case *rbacv1.ClusterRole:
		_, err = cs.RbacV1().ClusterRoles().Create(ctx, v, opts)
	case *rbacv1.ClusterRoleBinding:
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, v, opts)
	case *networkingv1.NetworkPolicy:
		_, err = cs.NetworkingV1().NetworkPolicies(v.Namespace).Create(ctx, v, opts)
	default:
		return errUnknownKind(o.kind)
	}
	return err
}

type errUnknownKind string

func (e errUnknownKind) Error() string { return "no client for kind " + string(e) }
