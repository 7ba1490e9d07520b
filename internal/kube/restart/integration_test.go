package restart_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/restart"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/kubeapi"
)

const ns = "team"

// counter counts the API requests of one client by "VERB resource".
type counter struct {
	mu  sync.Mutex
	n   map[string]int
	log []string // "VERB /path" in order
}

func (c *counter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		// .../namespaces/NS/RESOURCE/NAME[/SUB]
		res := ""
		for i, p := range parts {
			if p == "namespaces" && i+2 < len(parts) {
				res = parts[i+2]
				if i+4 < len(parts) {
					res += "/" + parts[i+4]
				}
			}
		}
		c.mu.Lock()
		c.n[r.Method+" "+res]++
		c.log = append(c.log, r.Method+" "+r.URL.Path)
		c.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (c *counter) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

// writes counts every request that is not a GET.
func (c *counter) writes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for k, v := range c.n {
		if !strings.HasPrefix(k, "GET ") {
			n += v
		}
	}
	return n
}

func (c *counter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

type sink struct {
	mu     sync.Mutex
	events []string
}

func (s *sink) Normal(pod provider.Pod, reason, msg string) { s.add("Normal", pod, reason, msg) }
func (s *sink) Warning(pod provider.Pod, reason, msg string) {
	s.add("Warning", pod, reason, msg)
}
func (s *sink) add(typ string, pod provider.Pod, reason, msg string) {
	s.mu.Lock()
	s.events = append(s.events, typ+" "+pod.Name+" "+reason+": "+msg)
	s.mu.Unlock()
}
func (s *sink) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.events
	s.events = nil
	return out
}

// node is one driver's restart hook with the driver's own token, as
// deploy/components/restart-on-change grants it.
type node struct {
	*restart.Restarter
	calls  *counter
	events *sink
	reg    *prometheus.Registry
}

// results reads secretfs_restarts_total, by result, leaving out zeros.
func (n *node) results(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "secretfs_restarts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v != 0 {
				out[m.GetLabel()[0].GetValue()] = v
			}
		}
	}
	return out
}

func newNode(t *testing.T, cfg *rest.Config) *node {
	t.Helper()
	return newNodeWith(t, cfg, restart.Options{EvictionRetries: 3, EvictionBackoff: 10 * time.Millisecond})
}

// newNodeWith is newNode with opts (Client and Events are set here).
func newNodeWith(t *testing.T, cfg *rest.Config, opts restart.Options) *node {
	t.Helper()
	n := &node{calls: &counter{n: map[string]int{}}, events: &sink{}}
	cfg = rest.CopyConfig(cfg)
	cfg.WrapTransport = n.calls.wrap
	restart.ClientConfig(cfg) // as the driver makes its client
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.reg = prometheus.NewRegistry()
	opts.Client, opts.Events, opts.FieldManager, opts.Registerer = client, n.events, "secretfs", n.reg
	n.Restarter, err = restart.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// start runs an API server with the deployment and replicaset controllers,
// the component's RBAC and admission policy as shipped, and returns a
// config with a token of the driver's service account.
func start(t *testing.T) (*kubeapi.Server, *rest.Config) {
	t.Helper()
	srv, err := kubeapi.Start()
	srv = kubeapi.Require(t, srv, err)
	t.Cleanup(srv.Stop)
	kubeapi.Require(t, srv, srv.StartControllers("deployment", "replicaset"))
	ctx := context.Background()
	for _, n := range []string{ns, "secretfs-system"} {
		if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range []struct{ ns, name string }{{"secretfs-system", "secretfs-node"}, {ns, "default"}} {
		if _, err := srv.Client.CoreV1().ServiceAccounts(sa.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	docs := readDocs(t, "../../../deploy/components/restart-on-change/rbac.yaml")
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	unmarshal(t, docs[0], &role)
	unmarshal(t, docs[1], &binding)
	if _, err := srv.Client.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.RbacV1().ClusterRoleBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	docs = readDocs(t, "../../../deploy/components/restart-on-change/policy.yaml")
	var policy admissionv1.ValidatingAdmissionPolicy
	var pb admissionv1.ValidatingAdmissionPolicyBinding
	unmarshal(t, docs[0], &policy)
	unmarshal(t, docs[1], &pb)
	if _, err := srv.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &pb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, _, err := srv.Token(ctx, "secretfs-system", "secretfs-node", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: srv.Host, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: srv.CAData}}
	// The policy takes effect within a few seconds of its creation: wait
	// until a change it refuses is refused.
	createDeployment(t, srv, "probe", 0)
	drv := kubernetes.NewForConfigOrDie(cfg)
	eventually(t, "the policy in force", func() bool {
		_, err := drv.AppsV1().Deployments(ns).Patch(ctx, "probe", types.MergePatchType, []byte(`{"spec":{"replicas":2}}`),
			metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return apierrors.IsInvalid(err)
	})
	return srv, cfg
}

func readDocs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%s: %d documents, want 2", path, len(docs))
	}
	return docs
}

func unmarshal(t *testing.T, doc string, into any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
		t.Fatal(err)
	}
}

func createDeployment(t *testing.T, srv *kubeapi.Server, name string, replicas int32) {
	t.Helper()
	_, err := srv.Client.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}, Annotations: map[string]string{"team/owner": "shop"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
			}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
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

// settled waits until the deployment controller has acted on the
// Deployment's latest spec, and returns its ReplicaSets' names.
func settled(t *testing.T, srv *kubeapi.Server, name string) []string {
	t.Helper()
	ctx := context.Background()
	eventually(t, "the deployment controller to observe "+name, func() bool {
		d, err := srv.Client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && d.Status.ObservedGeneration == d.Generation
	})
	list, err := srv.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rs := range list.Items {
		out = append(out, rs.Name)
	}
	return out
}

func livePods(t *testing.T, srv *kubeapi.Server, name string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, fmt.Sprintf("%d pods of %s", n, name), func() bool {
		list, err := srv.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		return len(pods) == n
	})
	return pods
}

var (
	restarting = &class.Class{Name: "app", Namespace: ns, Provider: "fake",
		Parameters: map[string]string{class.ParamOnChange: class.OnChangeRestart}}
	plain = &class.Class{Name: "plain", Namespace: ns, Provider: "fake", Parameters: map[string]string{}}
)

func vol(c *class.Class, p corev1.Pod, first bool, pass string) hook.Volume {
	return hook.Volume{ID: "vol-" + p.Name, Class: c, Provider: "fake", First: first,
		Pod:   provider.Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), ServiceAccount: "default"},
		Files: []provider.File{{Path: "pass", Mode: 0o644, Contents: []byte(pass)}}}
}

func TestRestartOnChange(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	createDeployment(t, srv, "web", 3)
	pods := livePods(t, srv, "web", 3)
	if rs := settled(t, srv, "web"); len(rs) != 1 {
		t.Fatalf("ReplicaSets before: %v", rs)
	}
	// Three pods on two nodes.
	a, b := newNode(t, cfg), newNode(t, cfg)
	onA, onB := pods[:2], pods[2:]
	each := func(v func(corev1.Pod) hook.Volume) {
		for _, p := range onA {
			a.Changed(ctx, v(p))
		}
		a.WaitIdle()
		for _, p := range onB {
			b.Changed(ctx, v(p))
		}
		b.WaitIdle()
	}

	// A first publish is not a change; a class without the opt-in never
	// restarts.
	each(func(p corev1.Pod) hook.Volume { return vol(restarting, p, true, "v1") })
	each(func(p corev1.Pod) hook.Volume { return vol(plain, p, false, "v2") })
	if n := a.calls.total() + b.calls.total(); n != 0 {
		t.Fatalf("first publishes and a class without the opt-in made %d API calls", n)
	}

	// One rotation seen by every pod on both nodes: one write, one rollout.
	each(func(p corev1.Pod) hook.Volume { return vol(restarting, p, false, "v2") })
	if w := a.calls.writes() + b.calls.writes(); w != 1 || a.calls.get("PATCH deployments") != 1 {
		t.Fatalf("writes: node a %v, node b %v; want one patch of the Deployment", a.calls.n, b.calls.n)
	}
	// Node a: two pods read, their ReplicaSet and Deployment read once.
	// Node b: its pod, the ReplicaSet and the Deployment, which carries the
	// value already.
	for name, want := range map[string]map[string]int{
		"a": {"GET pods": 2, "GET replicasets": 1, "GET deployments": 1, "PATCH deployments": 1},
		"b": {"GET pods": 1, "GET replicasets": 1, "GET deployments": 1},
	} {
		n := map[string]*node{"a": a, "b": b}[name]
		for k, v := range want {
			if got := n.calls.get(k); got != v {
				t.Errorf("node %s: %d %s, want %d (%v)", name, got, k, v, n.calls.n)
			}
		}
	}
	if rs := settled(t, srv, "web"); len(rs) != 2 {
		t.Fatalf("ReplicaSets after one rotation: %v, want 2", rs)
	}
	if ra, rb := a.results(t), b.results(t); !maps.Equal(ra, map[string]float64{"rolled_out": 1, "carried": 1}) || !maps.Equal(rb, map[string]float64{"carried": 1}) {
		t.Errorf("secretfs_restarts_total: node a %v, node b %v", ra, rb)
	}
	d, err := srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := restart.Value(restart.Digest(ns, "app", vol(restarting, pods[0], false, "v2").Files))
	if got := d.Spec.Template.Annotations; got[restart.Annotation] != want || got["team/owner"] != "shop" || len(got) != 2 {
		t.Errorf("template annotations %v, want %s=%s beside the others", got, restart.Annotation, want)
	}
	evA, evB := a.events.take(), b.events.take()
	if len(evA) != 1 || !strings.Contains(evA[0], "Normal") || !strings.Contains(evA[0], restart.ReasonRestarted) ||
		!strings.Contains(evA[0], `Deployment "web"`) || !strings.Contains(evA[0], `SecretProviderClass "app"`) || len(evB) != 0 {
		t.Errorf("events: node a %q, node b %q; want one Normal event naming the Deployment and the class", evA, evB)
	}

	// The same content again (another refresh that changed it back and
	// forth is a new value; the same one is nothing): no call on a node
	// that wrote or saw it, no write on a new one.
	before := a.calls.total() + b.calls.total()
	each(func(p corev1.Pod) hook.Volume { return vol(restarting, p, false, "v2") })
	if n := a.calls.total() + b.calls.total() - before; n != 0 {
		t.Errorf("the same value again: %d API calls", n)
	}
	// (So is a driver that restarted and tells the change again: the job
	// held it open until it was done.)
	c := newNode(t, cfg)
	var holds, taken atomic.Int32
	again := vol(restarting, pods[0], false, "v2")
	again.Hold = func() func() { taken.Add(1); holds.Add(1); return func() { holds.Add(-1) } }
	c.Changed(ctx, again)
	c.WaitIdle()
	if c.calls.writes() != 0 {
		t.Errorf("a new node wrote %v", c.calls.n)
	}
	if c.calls.total() == 0 || taken.Load() != 1 || holds.Load() != 0 {
		t.Errorf("a job that ran made %d calls, took %d holds and left %d; want some calls, one hold taken and let go", c.calls.total(), taken.Load(), holds.Load())
	}
	if rs := settled(t, srv, "web"); len(rs) != 2 {
		t.Fatalf("ReplicaSets: %v, want still 2", rs)
	}

	// A second rotation seen by an old pod: nothing, since the rollout under
	// way replaces it (the first one has not gone far: pods stay Pending
	// without a scheduler, so the old ones stay).
	before = a.calls.writes()
	a.Changed(ctx, vol(restarting, pods[0], false, "v3"))
	a.WaitIdle()
	if a.calls.writes() != before {
		t.Errorf("a pod of an older template than the Deployment's wrote: %v", a.calls.n)
	}
	// Seen by a pod of the new template: a second rollout.
	fresh := newestPod(t, srv, "web")
	a.Changed(ctx, vol(restarting, fresh, false, "v3"))
	a.WaitIdle()
	if rs := settled(t, srv, "web"); len(rs) != 3 {
		t.Fatalf("ReplicaSets after a second rotation: %v, want 3", rs)
	}
	fresh = newestPod(t, srv, "web")

	// A third rotation seen at the same moment by two new nodes (by the
	// pod of the current template, as if it were on both), each reading
	// the Deployment before the other wrote: both may patch, with the same
	// value, and the template changes once.
	d, err = srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gen := d.Generation
	x, y := newNode(t, cfg), newNode(t, cfg)
	var wg sync.WaitGroup
	for _, n := range []*node{x, y} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.Changed(ctx, vol(restarting, fresh, false, "v4"))
			n.WaitIdle()
		}()
	}
	wg.Wait()
	if w := x.calls.writes() + y.calls.writes(); w < 1 || w > 2 {
		t.Errorf("two nodes at once: %d writes, want 1 or 2", w)
	}
	if rs := settled(t, srv, "web"); len(rs) != 4 {
		t.Fatalf("ReplicaSets after a third rotation: %v, want 4", rs)
	}
	if d, err = srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{}); err != nil || d.Generation != gen+1 {
		t.Errorf("generation %d after a rotation seen by two nodes at once, want %d (%v)", d.Generation, gen+1, err)
	}
}

func bare(t *testing.T, srv *kubeapi.Server, name string, owner *metav1.OwnerReference) corev1.Pod {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bare": name}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	out, err := srv.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return *out
}

// A pod without a controller is evicted; a disruption budget that refuses
// is retried a bounded number of times, then told; a Job's pod is left.
func TestEvictAndSkip(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	n := newNode(t, cfg)

	p := bare(t, srv, "solo", nil)
	n.Changed(ctx, vol(restarting, p, false, "v2"))
	n.WaitIdle()
	if got := n.calls.get("POST pods/eviction"); got != 1 || n.calls.writes() != 1 {
		t.Errorf("eviction calls %v", n.calls.n)
	}
	eventually(t, "the pod evicted", func() bool {
		_, err := srv.Client.CoreV1().Pods(ns).Get(ctx, "solo", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if ev := n.events.take(); len(ev) != 1 || !strings.Contains(ev[0], "Normal solo "+restart.ReasonRestarted+": Evicted") {
		t.Errorf("events %q", ev)
	}

	// A running pod under a budget that allows no disruption.
	p = bare(t, srv, "guarded", nil)
	p.Status.Phase = corev1.PodRunning
	if _, err := srv.Client.CoreV1().Pods(ns).UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := intstr.FromInt32(1)
	if _, err := srv.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "guard"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"bare": "guarded"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := n.calls.get("POST pods/eviction")
	guarded := vol(restarting, p, false, "v2")
	var holds, taken atomic.Int32
	guarded.Hold = func() func() { taken.Add(1); holds.Add(1); return func() { holds.Add(-1) } }
	n.Changed(ctx, guarded)
	n.WaitIdle()
	if taken.Load() != 1 || holds.Load() != 0 {
		t.Errorf("a refused eviction, retried: %d holds taken, %d left; want the change held through the retries and let go after the last", taken.Load(), holds.Load())
	}
	if got := n.calls.get("POST pods/eviction") - before; got != 3 {
		t.Errorf("%d eviction attempts under a refusing budget, want 3 (EvictionRetries)", got)
	}
	if _, err := srv.Client.CoreV1().Pods(ns).Get(ctx, "guarded", metav1.GetOptions{}); err != nil {
		t.Errorf("the guarded pod: %v", err)
	}
	if ev := n.events.take(); len(ev) != 1 || !strings.Contains(ev[0], "Warning guarded "+restart.ReasonNotRestarted) || !strings.Contains(ev[0], "disruption budget") {
		t.Errorf("events %q", ev)
	}

	// A Job's pod: told, not touched.
	yes := true
	p = bare(t, srv, "batch", &metav1.OwnerReference{APIVersion: "batch/v1", Kind: "Job", Name: "nightly", UID: "0000-job", Controller: &yes})
	writes := n.calls.writes()
	n.Changed(ctx, vol(restarting, p, false, "v2"))
	n.WaitIdle()
	if n.calls.writes() != writes {
		t.Errorf("a Job's pod: writes %v", n.calls.n)
	}
	if got := n.results(t); !maps.Equal(got, map[string]float64{"evicted": 1, "failed": 1, "skipped": 1}) {
		t.Errorf("secretfs_restarts_total %v, want one evicted, failed (the budget) and skipped (the Job's pod)", got)
	}
	if ev := n.events.take(); len(ev) != 1 || !strings.Contains(ev[0], `Job "nightly"`) || !strings.Contains(ev[0], "Warning") {
		t.Errorf("events %q", ev)
	}
}

// The shipped policy on a real API server: the driver's token may change
// the restart annotation of a pod template and nothing else.
func TestAdmissionPolicy(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	drv := kubernetes.NewForConfigOrDie(cfg)
	createDeployment(t, srv, "web", 1)
	ss := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Spec: appsv1.StatefulSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "db"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}}}
	if _, err := srv.Client.AppsV1().StatefulSets(ns).Create(ctx, ss, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "agent"}, Spec: appsv1.DaemonSetSpec{
		Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "agent"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}}}
	if _, err := srv.Client.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dry := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}
	value := strings.Repeat("0123456789abcdef", 2)
	ann := func(k, v string) string {
		return fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{%q:%q}}}}}`, k, v)
	}
	allowed := []string{ann(restart.Annotation, value)}
	refused := map[string]string{
		"replicas":                    `{"spec":{"replicas":5}}`,
		"another template annotation": ann("team/owner", "mallory"),
		"a template label":            `{"spec":{"template":{"metadata":{"labels":{"extra":"x"}}}}}`,
		"the template's spec":         `{"spec":{"template":{"spec":{"serviceAccountName":"admin"}}}}`,
		"a label":                     `{"metadata":{"labels":{"x":"y"}}}`,
		"an annotation":               `{"metadata":{"annotations":{"x":"y"}}}`,
		"a value not 32 hex digits":   ann(restart.Annotation, "$(rm -rf /)"),
		"the strategy":                `{"spec":{"minReadySeconds":30}}`,
	}
	for _, patch := range allowed {
		if _, err := drv.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(patch), dry); err != nil {
			t.Errorf("Deployment %s: %v", patch, err)
		}
		if _, err := drv.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Errorf("StatefulSet %s: %v", patch, err)
		}
		// Not a dry run: the API server bumps a DaemonSet's template
		// generation annotation on a template change, which the policy
		// must let through.
		if _, err := drv.AppsV1().DaemonSets(ns).Patch(ctx, "agent", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Errorf("DaemonSet %s: %v", patch, err)
		}
	}
	for what, patch := range refused {
		_, err := drv.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(patch), dry)
		if !apierrors.IsInvalid(err) {
			t.Errorf("Deployment, %s: %v, want refused by the policy", what, err)
		}
	}
	if _, err := drv.AppsV1().StatefulSets(ns).Patch(ctx, "db", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), dry); !apierrors.IsInvalid(err) {
		t.Errorf("StatefulSet replicas: %v, want refused by the policy", err)
	}
	for what, patch := range map[string]string{
		"an annotation":       `{"metadata":{"annotations":{"x":"y"}}}`,
		"the update strategy": `{"spec":{"updateStrategy":{"type":"OnDelete"}}}`,
	} {
		if _, err := drv.AppsV1().DaemonSets(ns).Patch(ctx, "agent", types.MergePatchType, []byte(patch), dry); !apierrors.IsInvalid(err) {
			t.Errorf("DaemonSet, %s: %v, want refused by the policy", what, err)
		}
	}
	// RBAC: no create or delete of workloads, no update, no list.
	if err := drv.AppsV1().Deployments(ns).Delete(ctx, "web", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete: %v", err)
	}
	if _, err := drv.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list: %v", err)
	}
	if _, err := drv.CoreV1().Secrets(ns).Get(ctx, "any", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get secrets: %v", err)
	}
	// Other users are not matched.
	if _, err := srv.Client.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(refused["replicas"]), dry); err != nil {
		t.Errorf("the admin's patch: %v", err)
	}
}
