package restart_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/internal/kube/restart"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// A tenant's bare pods under a disruption budget that never allows an
// eviction make every eviction wait for its backoff. The waits must not
// hold the one worker: another workload's restart, queued after them, is
// written while their retries are still waiting (here an hour away).
func TestRefusedEvictionHoldsNoOtherRestart(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	n := newNodeWith(t, cfg, restart.Options{EvictionRetries: 3, EvictionBackoff: time.Hour, Timeout: 2 * time.Hour})

	one := intstr.FromInt32(1)
	if _, err := srv.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "wall"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "bare", Operator: metav1.LabelSelectorOpExists}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const attackers = 4
	var walls []corev1.Pod
	for i := range attackers {
		p := bare(t, srv, "wall-"+string(rune('a'+i)), nil)
		walls = append(walls, p)
		p.Status.Phase = corev1.PodRunning
		if _, err := srv.Client.CoreV1().Pods(ns).UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		n.Changed(ctx, vol(restarting, p, false, "flap"))
	}
	createDeployment(t, srv, "victim", 1)
	victim := livePods(t, srv, "victim", 1)[0]
	n.Changed(ctx, vol(restarting, victim, false, "v2"))

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("calls %v, events %q", n.calls.n, n.events.take())
		}
	})
	eventually(t, "the victim's Deployment restarted while the refused evictions wait", func() bool {
		d, err := srv.Client.AppsV1().Deployments(ns).Get(ctx, "victim", metav1.GetOptions{})
		return err == nil && d.Spec.Template.Annotations[restart.Annotation] != ""
	})
	if got := n.calls.get("POST pods/eviction"); got != attackers {
		t.Errorf("%d eviction attempts, want %d (one each; their retries wait an hour)", got, attackers)
	}
	if got := n.calls.get("PATCH deployments"); got != 1 {
		t.Errorf("%d Deployment patches, want 1", got)
	}
	// Their pods gone, their retries are dropped: nothing is left to do.
	for _, p := range walls {
		n.Gone(vol(restarting, p, false, "flap"))
	}
	idle := make(chan struct{})
	go func() { n.WaitIdle(); close(idle) }()
	eventually(t, "no job or retry left once the pods are gone", func() bool {
		select {
		case <-idle:
			return true
		default:
			return false
		}
	})
}

// Two classes that opt in, mounted by every pod of one Deployment, rotate
// together: each pod sees two changes, each with its own value. Written as
// they come, the template flips between the two values once per pod and
// class (six rollouts for three pods). One rollout is enough: a pod made
// from an older template than the workload's current one is replaced by
// the rollout under way, and its replacement mounts the new content.
func TestTwoClassesOneRotation(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	createDeployment(t, srv, "web", 3)
	pods := livePods(t, srv, "web", 3)
	settled(t, srv, "web")
	d, err := srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gen := d.Generation
	other := &class.Class{Name: "app2", Namespace: ns, Provider: "fake",
		Parameters: map[string]string{class.ParamOnChange: class.OnChangeRestart}}
	a, b := newNode(t, cfg), newNode(t, cfg)
	for i, p := range pods {
		n := a
		if i == 2 {
			n = b
		}
		for _, c := range []*class.Class{restarting, other} {
			n.Changed(ctx, vol(c, p, false, "rotated"))
			n.WaitIdle()
		}
	}
	patches := a.calls.get("PATCH deployments") + b.calls.get("PATCH deployments")
	settled(t, srv, "web")
	d, err = srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if patches != 1 || d.Generation != gen+1 {
		t.Errorf("one rotation of two classes seen by 3 pods: %d patches, %d rollouts; want 1 and 1", patches, d.Generation-gen)
	}

	// A pod of the new template that mounted before the second class
	// changed sees that change itself: a second rollout, as it must.
	fresh := newestPod(t, srv, "web")
	a.Changed(ctx, vol(other, fresh, false, "rotated again"))
	a.WaitIdle()
	settled(t, srv, "web")
	if d, err = srv.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{}); err != nil || d.Generation != gen+2 {
		t.Errorf("a pod of the current template saw a change: generation %d, want %d (%v)", d.Generation, gen+2, err)
	}
}

// newestPod returns a live pod of name made from its Deployment's current
// template.
func newestPod(t *testing.T, srv *kubeapi.Server, name string) corev1.Pod {
	t.Helper()
	var out corev1.Pod
	eventually(t, "a pod of the current template", func() bool {
		d, err := srv.Client.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		list, err := srv.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && p.Annotations[restart.Annotation] == d.Spec.Template.Annotations[restart.Annotation] {
				out = p
				return true
			}
		}
		return false
	})
	return out
}

// A tenant whose pods see their content change without pause (a Secret
// rewritten every second) keeps the node's one worker busy, at the
// restart QPS. Jobs of one pod coalesce while queued, so another tenant's
// restart waits for at most one job of each of those pods (and the one
// running), however many changes they see: its patch comes after at most
// two jobs of each flapping pod, of at most 4 requests each (pod,
// ReplicaSet and Deployment reads, a patch), not after every change.
func TestFlappingPodsDelayOthersByOneJobEach(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	const flappers = 4
	var pods []corev1.Pod
	for i := range flappers {
		name := fmt.Sprintf("flap-%d", i)
		createDeployment(t, srv, name, 1)
		pods = append(pods, livePods(t, srv, name, 1)[0])
	}
	createDeployment(t, srv, "victim", 1)
	victim := livePods(t, srv, "victim", 1)[0]
	n := newNode(t, cfg) // the client at client-go's default 5 requests/s, as --restart-qps

	stop := make(chan struct{})
	changes := 0
	var wg sync.WaitGroup
	wg.Go(func() {
		for round := 0; ; round++ {
			for _, p := range pods {
				select {
				case <-stop:
					return
				default:
				}
				n.Changed(ctx, vol(restarting, p, false, fmt.Sprint(round)))
				changes++
			}
			if round == 3 {
				n.Changed(ctx, vol(restarting, victim, false, "v2"))
			}
			time.Sleep(time.Millisecond) // thousands of changes a second, without spinning
		}
	})
	eventually(t, "the victim's Deployment restarted", func() bool {
		return victimPatched(n.calls, "victim")
	})
	close(stop)
	wg.Wait()
	n.calls.mu.Lock()
	log := slices.Clone(n.calls.log)
	n.calls.mu.Unlock()
	at := slices.IndexFunc(log, func(s string) bool { return s == "PATCH /apis/apps/v1/namespaces/"+ns+"/deployments/victim" })
	before := 0
	for _, s := range log[:at] {
		if strings.Contains(s, "/flap-") {
			before++
		}
	}
	t.Logf("%d changes of %d flapping pods; %d of their requests before the victim's patch", changes, flappers, before)
	if limit := 2 * 4 * flappers; before > limit {
		t.Errorf("%d requests of flapping pods before the victim's patch, want at most %d", before, limit)
	}
}

func victimPatched(c *counter, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Contains(c.log, "PATCH /apis/apps/v1/namespaces/"+ns+"/deployments/"+name)
}

// A tenant's pod that names another namespace's Deployment as its
// controller (the name and UID copied from it) restarts nothing there:
// the driver looks its workload up in the pod's own namespace only, and a
// namesake there with another UID is not it.
func TestForeignControllerNotRestarted(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	theirs, err := srv.Client.AppsV1().Deployments("other").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createDeployment(t, srv, "web", 0) // a namesake in the tenant's namespace
	n := newNode(t, cfg)
	yes := true
	for _, kind := range []string{"Deployment", "ReplicaSet"} {
		p := bare(t, srv, "claims-"+strings.ToLower(kind), &metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: "web", UID: theirs.UID, Controller: &yes})
		n.Changed(ctx, vol(restarting, p, false, "v2"))
		n.WaitIdle()
	}
	if w := n.calls.writes(); w != 0 {
		t.Errorf("%d writes for pods claiming another namespace's workload: %v", w, n.calls.n)
	}
	after, err := srv.Client.AppsV1().Deployments("other").Get(ctx, "web", metav1.GetOptions{})
	if err != nil || after.Generation != theirs.Generation || after.Spec.Template.Annotations[restart.Annotation] != "" {
		t.Errorf("the other namespace's Deployment changed: generation %d -> %d (%v)", theirs.Generation, after.Generation, err)
	}
	if ev := n.events.take(); len(ev) != 2 || !strings.Contains(ev[0], "Warning") || !strings.Contains(ev[1], "Warning") {
		t.Errorf("events %q, want a Warning for each pod", ev)
	}
}
