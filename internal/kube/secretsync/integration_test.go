package secretsync_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/internal/kube/secretsync"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/kubeapi"
)

const ns = "team-a"

var cls = &class.Class{Name: "app", Namespace: ns, Provider: "fake", SecretObjects: []class.SecretObject{{
	SecretName: "app-env", Data: []class.SecretObjectData{{ObjectName: "pass", Key: "PASS"}},
}}}

type node struct {
	name     string
	syncer   *secretsync.Syncer
	registry *prometheus.Registry
}

// newNode is one driver's sync, as the driver's service account with only
// the sync-secrets component's RBAC (impersonated).
func newNode(t *testing.T, srv *kubeapi.Server, name string) *node {
	t.Helper()
	cfg := rest.CopyConfig(srv.Admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:secretfs-system:secretfs-node"}
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return newNodeWith(t, client, name)
}

// newNodeWith is one driver's sync writing with client.
func newNodeWith(t *testing.T, client kubecore.SecretsGetter, name string, set ...func(*secretsync.Options)) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := secretsync.Options{Client: client, Registerer: reg, FieldManager: "secretfs-" + name,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	for _, f := range set {
		f(&opts)
	}
	s, err := secretsync.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return &node{name: name, syncer: s, registry: reg}
}

// requests is the number of API requests the node's sync made.
func (n *node) requests(t *testing.T) int {
	t.Helper()
	mfs, err := n.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, mf := range mfs {
		if mf.GetName() == "secretfs_secret_sync_requests_total" {
			for _, m := range mf.GetMetric() {
				total += int(m.GetCounter().GetValue())
			}
		}
	}
	return total
}

func start(t *testing.T) *kubeapi.Server {
	t.Helper()
	srv, err := kubeapi.Start()
	srv = kubeapi.Require(t, srv, err)
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The component's RBAC, as shipped.
	data, err := os.ReadFile("../../../deploy/components/sync-secrets/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &role); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &binding); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.RbacV1().ClusterRoleBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return srv
}

func createPod(t *testing.T, srv *kubeapi.Server, name string) provider.Pod {
	t.Helper()
	p, err := srv.Client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return provider.Pod{Namespace: ns, Name: name, UID: string(p.UID), ServiceAccount: "default"}
}

func deletePod(t *testing.T, srv *kubeapi.Server, name string) {
	t.Helper()
	zero := int64(0)
	if err := srv.Client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
}

func volume(pod provider.Pod, pass string) hook.Volume {
	return hook.Volume{ID: "vol-" + pod.Name, Pod: pod, Class: cls, Provider: "fake",
		Files: []provider.File{{Path: "pass", Mode: 0o644, Contents: []byte(pass)}}}
}

func secret(t *testing.T, srv *kubeapi.Server) *corev1.Secret {
	t.Helper()
	s, err := srv.Client.CoreV1().Secrets(ns).Get(context.Background(), "app-env", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func owners(s *corev1.Secret) []string {
	var out []string
	for _, o := range s.OwnerReferences {
		out = append(out, o.Name)
	}
	slices.Sort(out)
	return out
}

// Two driver instances as two nodes sync the same Secret concurrently: every
// pod of both ends up an owner (no lost update), and the garbage collector
// deletes the Secret only after the last pod on either node.
func TestTwoNodesOneSecret(t *testing.T) {
	srv := start(t)
	ctx := context.Background()
	a, b := newNode(t, srv, "node-a"), newNode(t, srv, "node-b")
	const perNode = 5
	var pods []provider.Pod
	for i := range 2 * perNode {
		pods = append(pods, createPod(t, srv, fmt.Sprintf("pod-%d", i)))
	}
	var wg sync.WaitGroup
	for i, p := range pods {
		n := a
		if i%2 == 1 {
			n = b
		}
		wg.Go(func() { n.syncer.Changed(ctx, volume(p, "one")) })
	}
	wg.Wait()
	sec := secret(t, srv)
	var want []string
	for _, p := range pods {
		want = append(want, p.Name)
	}
	slices.Sort(want)
	if got := owners(sec); !slices.Equal(got, want) {
		t.Fatalf("owners %v, want every pod of both nodes %v", got, want)
	}
	if sec.Labels[secretsync.ManagedLabel] != "true" || string(sec.Data["PASS"]) != "one" {
		t.Fatalf("secret %+v", sec)
	}
	t.Logf("API requests for %d first publishes: node-a %d, node-b %d", 2*perNode, a.requests(t), b.requests(t))

	// Rotation seen by both nodes: the Secret ends with the new value.
	wg.Go(func() {
		for i := 0; i < len(pods); i += 2 {
			a.syncer.Changed(ctx, volume(pods[i], "two"))
		}
	})
	wg.Go(func() {
		for i := 1; i < len(pods); i += 2 {
			b.syncer.Changed(ctx, volume(pods[i], "two"))
		}
	})
	wg.Wait()
	if got := string(secret(t, srv).Data["PASS"]); got != "two" {
		t.Fatalf("after rotation PASS=%q", got)
	}

	// The garbage collector does the counting across nodes.
	kubeapi.Require(t, srv, srv.StartGarbageCollector())
	// Every pod of node-a goes: the Secret stays for node-b's pods.
	for i := 0; i < len(pods); i += 2 {
		a.syncer.Gone(volume(pods[i], ""))
		deletePod(t, srv, pods[i].Name)
	}
	eventually(t, "node-a's owners removed by the garbage collector", func() bool {
		return len(secret(t, srv).OwnerReferences) == perNode
	})
	// All but the last pod of node-b go: still there.
	for i := 1; i < len(pods)-1; i += 2 {
		b.syncer.Gone(volume(pods[i], ""))
		deletePod(t, srv, pods[i].Name)
	}
	eventually(t, "one owner left", func() bool { return len(secret(t, srv).OwnerReferences) == 1 })
	last := pods[len(pods)-1]
	b.syncer.Gone(volume(last, ""))
	deletePod(t, srv, last.Name)
	eventually(t, "the Secret deleted after the last pod", func() bool {
		_, err := srv.Client.CoreV1().Secrets(ns).Get(ctx, "app-env", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// A Secret the node knows, replaced by someone else's Secret of the same
// name: the uid in the patch makes the API server refuse it, and the node
// then finds the new Secret unmanaged and leaves it alone.
func TestReplacedSecretIsNotOverwritten(t *testing.T) {
	srv := start(t)
	ctx := context.Background()
	n := newNode(t, srv, "node-a")
	p := createPod(t, srv, "pod-0")
	n.syncer.Changed(ctx, volume(p, "one"))
	secret(t, srv)
	if err := srv.Client.CoreV1().Secrets(ns).Delete(ctx, "app-env", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-env"},
		Data: map[string][]byte{"PASS": []byte("theirs")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.syncer.Changed(ctx, volume(p, "two"))
	sec := secret(t, srv)
	if string(sec.Data["PASS"]) != "theirs" || len(sec.OwnerReferences) != 0 || sec.Labels[secretsync.ManagedLabel] != "" {
		t.Fatalf("an unmanaged Secret was written: %+v", sec)
	}
	// Requests by this node: get of the pod (its controller, once per
	// volume), create; then patch (refused), create (exists), the test
	// patch (fails), the label's test alone (fails: unmanaged).
	if got := n.requests(t); got != 6 {
		t.Errorf("%d requests, want 6", got)
	}
}

// The sync's first publish adds two requests (the get of the pod for its
// controller, the create); a second pod on the node (a bare pod: its own
// owner) a get and a patch; a refresh that changes nothing none.
func TestRequestsPerPublish(t *testing.T) {
	srv := start(t)
	ctx := context.Background()
	n := newNode(t, srv, "node-a")
	p0, p1 := createPod(t, srv, "pod-0"), createPod(t, srv, "pod-1")
	steps := []struct {
		what string
		do   func()
		want int
	}{
		{"first publish", func() { n.syncer.Changed(ctx, volume(p0, "one")) }, 2},
		{"same content again", func() { n.syncer.Changed(ctx, volume(p0, "one")) }, 0},
		{"second pod", func() { n.syncer.Changed(ctx, volume(p1, "one")) }, 2},
		{"rotation", func() { n.syncer.Changed(ctx, volume(p0, "two")) }, 1},
		{"unpublish", func() { n.syncer.Gone(volume(p0, "")) }, 0},
	}
	for _, s := range steps {
		before := n.requests(t)
		s.do()
		if got := n.requests(t) - before; got != s.want {
			t.Errorf("%s: %d API requests, want %d", s.what, got, s.want)
		}
	}
	if v := testutil.ToFloat64(counter(t, n.registry, "sync_k8s_secret_total")); v != 3 {
		t.Errorf("sync_k8s_secret_total = %v, want 3", v)
	}
}

func counter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
			c.Add(sum)
			return c
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not in time: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
