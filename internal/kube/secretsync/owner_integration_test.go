package secretsync_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/internal/kube/secretsync"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// The owner tests run the workload controllers and the garbage collector
// of a real kube-controller-manager: Deployments make ReplicaSets and pods
// as in a cluster (the pods stay Pending: no scheduler, no kubelet), the
// syncs publish them as kubelet would, and the garbage collector decides
// when a Secret goes.

func startWithControllers(t *testing.T) *kubeapi.Server {
	t.Helper()
	srv := start(t)
	kubeapi.Require(t, srv, srv.StartControllers("garbagecollector", "deployment", "replicaset", "statefulset"))
	return srv
}

func classFor(secretName string) *class.Class {
	return &class.Class{Name: "app", Namespace: ns, Provider: "fake", SecretObjects: []class.SecretObject{{
		SecretName: secretName, Data: []class.SecretObjectData{{ObjectName: "pass", Key: "PASS"}},
	}}}
}

func volumeOf(c *class.Class, p corev1.Pod, pass string) hook.Volume {
	return hook.Volume{ID: "vol-" + p.Name, Class: c, Provider: "fake",
		Pod:   provider.Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), ServiceAccount: "default"},
		Files: []provider.File{{Path: "pass", Mode: 0o644, Contents: []byte(pass)}}}
}

func podTemplate(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
}

func createDeployment(t *testing.T, srv *kubeapi.Server, name string, replicas int32) {
	t.Helper()
	_, err := srv.Client.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: podTemplate(name)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// podsOf waits until exactly n live pods carry app=name and returns them.
func podsOf(t *testing.T, srv *kubeapi.Server, name string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	eventually(t, fmt.Sprintf("%d pods of %s", n, name), func() bool {
		list, err := srv.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{
			LabelSelector: labels.SelectorFromSet(labels.Set{"app": name}).String()})
		if err != nil {
			t.Fatal(err)
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

func secretNamed(t *testing.T, srv *kubeapi.Server, name string) *corev1.Secret {
	t.Helper()
	s, err := srv.Client.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ownerKinds is "Kind/name" of each owner, sorted.
func ownerKinds(s *corev1.Secret) []string {
	var out []string
	for _, o := range s.OwnerReferences {
		out = append(out, o.Kind+"/"+o.Name)
	}
	slices.Sort(out)
	return out
}

func waitOwners(t *testing.T, srv *kubeapi.Server, name string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d owners of Secret %s", n, name), func() bool {
		return len(secretNamed(t, srv, name).OwnerReferences) == n
	})
}

func waitGone(t *testing.T, srv *kubeapi.Server, name string) {
	t.Helper()
	eventually(t, "Secret "+name+" deleted by the garbage collector", func() bool {
		_, err := srv.Client.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

func deleteDeployment(t *testing.T, srv *kubeapi.Server, name string) {
	t.Helper()
	bg := metav1.DeletePropagationBackground
	if err := srv.Client.AppsV1().Deployments(ns).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Fatal(err)
	}
}

// requestsBy is the node's sync requests of one verb ("create", "patch",
// "get-pod").
func (n *node) requestsBy(t *testing.T, verb string) int {
	t.Helper()
	mfs, err := n.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, mf := range mfs {
		if mf.GetName() != "secretfs_secret_sync_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "verb" && l.GetValue() == verb {
					total += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return total
}

func ownerMode(m secretsync.OwnerMode) func(*secretsync.Options) {
	return func(o *secretsync.Options) { o.Owner = m }
}

// The Secrets Store CSI Driver's own sequence: two Deployments of two
// replicas share a synced Secret, published on two nodes; the Secret's
// owners are the two ReplicaSets (every pod with --sync-owner=pod); after
// one Deployment is deleted one is left; after the other the Secret is gone.
func TestOwnersSSCDSequence(t *testing.T) {
	for _, tc := range []struct {
		mode            secretsync.OwnerMode
		owners, oneLeft int
		kind            string
	}{
		{secretsync.OwnerController, 2, 1, "ReplicaSet"},
		{secretsync.OwnerPod, 4, 2, "Pod"},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			srv := startWithControllers(t)
			ctx := context.Background()
			client := driverClient(t, srv)
			a := newNodeWith(t, client, "node-a", ownerMode(tc.mode))
			b := newNodeWith(t, client, "node-b", ownerMode(tc.mode))
			c := classFor("app-env")
			createDeployment(t, srv, "web", 2)
			createDeployment(t, srv, "api", 2)
			pods := map[string][]corev1.Pod{"web": podsOf(t, srv, "web", 2), "api": podsOf(t, srv, "api", 2)}
			for _, app := range []string{"web", "api"} {
				a.syncer.Changed(ctx, volumeOf(c, pods[app][0], "one"))
				b.syncer.Changed(ctx, volumeOf(c, pods[app][1], "one"))
			}
			sec := secretNamed(t, srv, "app-env")
			got := ownerKinds(sec)
			t.Logf("owners with --sync-owner=%s: %v; owner writes node-a %d, node-b %d (create+patch), pod reads %d",
				tc.mode, got, a.requestsBy(t, "create")+a.requestsBy(t, "patch"), b.requestsBy(t, "create")+b.requestsBy(t, "patch"),
				a.requestsBy(t, "get-pod")+b.requestsBy(t, "get-pod"))
			if len(got) != tc.owners {
				t.Fatalf("owners %v, want %d", got, tc.owners)
			}
			for _, o := range sec.OwnerReferences {
				if o.Kind != tc.kind {
					t.Fatalf("owner %s/%s, want kind %s", o.Kind, o.Name, tc.kind)
				}
			}

			deleteDeployment(t, srv, "web")
			for i, p := range pods["web"] {
				n := a
				if i == 1 {
					n = b
				}
				n.syncer.Gone(volumeOf(c, p, ""))
			}
			waitOwners(t, srv, "app-env", tc.oneLeft)
			deleteDeployment(t, srv, "api")
			waitGone(t, srv, "app-env")
		})
	}
}

// driverClient is the driver's client: its service account (impersonated)
// with only the sync-secrets component's RBAC.
func driverClient(t *testing.T, srv *kubeapi.Server) *kubecore.Client {
	t.Helper()
	cfg := rest.CopyConfig(srv.Admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:secretfs-system:secretfs-node"}
	client, err := kubecore.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// A StatefulSet owns its pods' Secret; a bare pod owns its own.
func TestOwnersStatefulSetAndBarePod(t *testing.T) {
	srv := startWithControllers(t)
	ctx := context.Background()
	n := newNodeWith(t, driverClient(t, srv), "node-a")
	replicas := int32(2)
	if _, err := srv.Client.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: appsv1.StatefulSetSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			PodManagementPolicy: appsv1.ParallelPodManagement, Template: podTemplate("db")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sts := classFor("db-env")
	for _, p := range podsOf(t, srv, "db", 2) {
		n.syncer.Changed(ctx, volumeOf(sts, p, "one"))
	}
	if got := ownerKinds(secretNamed(t, srv, "db-env")); !slices.Equal(got, []string{"StatefulSet/db"}) {
		t.Errorf("StatefulSet's Secret owners %v, want [StatefulSet/db]", got)
	}

	bare := classFor("bare-env")
	p := createPod(t, srv, "bare")
	pod, err := srv.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.syncer.Changed(ctx, volumeOf(bare, *pod, "one"))
	if got := ownerKinds(secretNamed(t, srv, "bare-env")); !slices.Equal(got, []string{"Pod/bare"}) {
		t.Errorf("bare pod's Secret owners %v, want [Pod/bare]", got)
	}
	n.syncer.Gone(volumeOf(bare, *pod, ""))
	deletePod(t, srv, "bare")
	waitGone(t, srv, "bare-env")

	if err := srv.Client.AppsV1().StatefulSets(ns).Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, srv, "db-env")
}

// A Deployment rollout: the old and the new ReplicaSet both own the Secret
// until the old one is deleted; the rollout costs one owner patch on the
// node (the new ReplicaSet), whatever the number of its pods there.
func TestOwnersRollout(t *testing.T) {
	srv := startWithControllers(t)
	ctx := context.Background()
	n := newNodeWith(t, driverClient(t, srv), "node-a")
	c := classFor("app-env")
	createDeployment(t, srv, "web", 2)
	old := podsOf(t, srv, "web", 2)
	for _, p := range old {
		n.syncer.Changed(ctx, volumeOf(c, p, "one"))
	}
	oldRS := metav1.GetControllerOf(&old[0]).Name
	if got := ownerKinds(secretNamed(t, srv, "app-env")); !slices.Equal(got, []string{"ReplicaSet/" + oldRS}) {
		t.Fatalf("owners %v, want the ReplicaSet %s", got, oldRS)
	}

	// A new template: a new ReplicaSet. Without a kubelet no pod gets
	// ready, so the rollout stops at its surge pod (2 replicas: maxSurge
	// 1, maxUnavailable 0), both ReplicaSets live.
	// A merge patch, not get+update: the deployment controller writes the
	// object's status meanwhile, and an update would conflict.
	patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"rollout":"2"}}}}}`)
	if _, err := srv.Client.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var fresh corev1.Pod
	eventually(t, "a pod of the new ReplicaSet", func() bool {
		for _, p := range podsOf(t, srv, "web", 3) {
			if metav1.GetControllerOf(&p).Name != oldRS {
				fresh = p
				return true
			}
		}
		return false
	})
	newRS := metav1.GetControllerOf(&fresh).Name
	before := n.requestsBy(t, "create") + n.requestsBy(t, "patch")
	n.syncer.Changed(ctx, volumeOf(c, fresh, "one"))
	// A second volume of a pod of the new ReplicaSet on this node (another
	// volume of the same pod stands in for a second pod) costs nothing.
	second := volumeOf(c, fresh, "one")
	second.ID += "-2"
	n.syncer.Changed(ctx, second)
	if got := n.requestsBy(t, "create") + n.requestsBy(t, "patch") - before; got != 1 {
		t.Errorf("%d owner writes for the rollout on the node, want 1", got)
	}
	want := []string{"ReplicaSet/" + newRS, "ReplicaSet/" + oldRS}
	slices.Sort(want)
	if got := ownerKinds(secretNamed(t, srv, "app-env")); !slices.Equal(got, want) {
		t.Fatalf("owners during the rollout %v, want %v", got, want)
	}

	if err := srv.Client.AppsV1().ReplicaSets(ns).Delete(ctx, oldRS, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range old {
		n.syncer.Gone(volumeOf(c, p, ""))
	}
	waitOwners(t, srv, "app-env", 1)
	if got := ownerKinds(secretNamed(t, srv, "app-env")); !slices.Equal(got, []string{"ReplicaSet/" + newRS}) {
		t.Fatalf("owners after the old ReplicaSet is deleted %v, want [ReplicaSet/%s]", got, newRS)
	}
}

// 100 replicas of one Deployment on one node, published one after the
// other: the owner writes (create and patch) and the pod reads, by mode.
func TestOwnerWritesFor100Replicas(t *testing.T) {
	const replicas = 100
	for _, tc := range []struct {
		mode           secretsync.OwnerMode
		writes, owners int
		reads          int
	}{
		{secretsync.OwnerController, 1, 1, replicas},
		{secretsync.OwnerPod, replicas, replicas, 0},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			srv := startWithControllers(t)
			ctx := context.Background()
			n := newNodeWith(t, driverClient(t, srv), "node-a", ownerMode(tc.mode))
			c := classFor("app-env")
			createDeployment(t, srv, "web", replicas)
			for _, p := range podsOf(t, srv, "web", replicas) {
				n.syncer.Changed(ctx, volumeOf(c, p, "one"))
			}
			writes := n.requestsBy(t, "create") + n.requestsBy(t, "patch")
			reads := n.requestsBy(t, "get-pod")
			owners := len(secretNamed(t, srv, "app-env").OwnerReferences)
			t.Logf("--sync-owner=%s, %d replicas on one node: %d owners, %d writes (create+patch), %d pod reads",
				tc.mode, replicas, owners, writes, reads)
			if writes != tc.writes || owners != tc.owners || reads != tc.reads {
				t.Errorf("%d writes, %d owners, %d pod reads; want %d, %d, %d", writes, owners, reads, tc.writes, tc.owners, tc.reads)
			}
		})
	}
}
