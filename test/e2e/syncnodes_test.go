//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// deletionCost is the annotation by which a ReplicaSet picks the pod to
// delete on scale down (lowest first).
const deletionCost = "controller.kubernetes.io/pod-deletion-cost"

// The synced Secret's lifetime across nodes follows README's owner rule,
// with the real garbage collector: one Deployment with a replica on every
// node, each node's driver writing the one Secret.
//
//   - Owners as the Secrets Store CSI Driver makes them (the default): the
//     ReplicaSet, once, whichever nodes wrote it (the audit log shows the
//     drivers of every node writing, one create). Scaled down node by node
//     to 0, the Secret stays (its ReplicaSet still exists); deleting the
//     Deployment, the garbage collector deletes it.
//   - --sync-owner=pod: every pod is an owner, written by its own node's
//     driver. Scaled down node by node, the garbage collector drops each
//     gone pod from the owners; after the last pod it deletes the Secret.
func TestSyncedSecretFollowsItsOwnersAcrossNodes(t *testing.T) {
	ctx := context.Background()
	nodes := severalNodes(t)
	auditPath := auditLogPath(t)
	ns := newNamespace(t)
	pass := "p-" + randHex(8)
	createSyncClass(t, ns, "app", "v1", []object{{ObjectName: "pass", Value: pass}},
		[]any{secretObject("app-env", "Opaque", "pass", "PASS")})
	withComponents(t, "sync-secrets")
	driverUser := "system:serviceaccount:" + driverNamespace + ":" + driverSA

	t.Run("controller owner", func(t *testing.T) {
		byIP := driverIPs(t, nodes)
		dep, pods := spreadDeployment(t, ns, "shop", "app", nodes)
		rs := metav1.GetControllerOf(pods[0])
		s := waitSecret(t, ns, "app-env", "owned by the ReplicaSet", func(s *corev1.Secret) bool {
			return len(s.OwnerReferences) == 1 && s.OwnerReferences[0].UID == rs.UID
		})
		if string(s.Data["PASS"]) != pass || s.OwnerReferences[0].Kind != "ReplicaSet" {
			t.Fatalf("app-env: owners %+v, PASS %d bytes", s.OwnerReferences, len(s.Data["PASS"]))
		}
		// Every node's driver wrote the Secret (one create, the others
		// found it made), all as the driver.
		writes := auditedByNode(t, auditPath, ns, "app-env", byIP, "create", "update", "patch", "delete")
		t.Logf("writes of Secret %s/app-env in the audit log, by node, user, verb and code: %v", ns, writes)
		created := 0
		for k, n := range writes {
			if strings.Contains(k, " create 201") {
				created += n
			}
			if !strings.Contains(k, " "+driverUser+" ") || strings.HasPrefix(k, "other:") || strings.Contains(k, " delete ") {
				t.Errorf("a write of the Secret not by a node's driver, or a delete: %s", k)
			}
		}
		for _, n := range nodes {
			if !slices.ContainsFunc(slices.Collect(maps.Keys(writes)), func(k string) bool { return strings.HasPrefix(k, n+" ") }) {
				t.Errorf("node %s's driver did not write the Secret: %v", n, writes)
			}
		}
		if created != 1 {
			t.Errorf("%d creates of the Secret, want 1: %v", created, writes)
		}

		// Node by node: the ReplicaSet stays the one owner, down to 0.
		for i := len(nodes) - 1; i >= 0; i-- {
			gone := scaleDownOne(t, dep, pods, i)
			s, err := getSecret(ns, "app-env")
			if err != nil || len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != rs.UID {
				t.Fatalf("after the pod on %s left (%d replicas): Secret %+v, %v; want it owned by ReplicaSet %s", gone, i, s, err, rs.Name)
			}
			t.Logf("pod on %s gone, %d replicas: the Secret is there, owned by ReplicaSet %s", gone, i, rs.Name)
		}
		// The Deployment deleted: its ReplicaSet goes, and the garbage
		// collector deletes the Secret.
		bg := metav1.DeletePropagationBackground
		if err := client.AppsV1().Deployments(ns).Delete(ctx, dep.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
			t.Fatal(err)
		}
		waitSecretGone(t, ns, "app-env", "the Deployment and its ReplicaSet are deleted")
	})

	t.Run("pod owners", func(t *testing.T) {
		// One roll for both: this test's cleanup turns sync off as well, so
		// withComponents' own has nothing left to change.
		setDriverArg(t, "--sync-owner=pod", true)
		t.Cleanup(func() { setDriverArgs(t, map[string]bool{"--sync-owner=pod": false, "--sync-secrets": false}) })
		// A class and Secret of their own: nothing of the first subtest
		// (should it have failed) among the owners.
		createSyncClass(t, ns, "cart", "v1", []object{{ObjectName: "pass", Value: pass}},
			[]any{secretObject("cart-env", "Opaque", "pass", "PASS")})
		dep, pods := spreadDeployment(t, ns, "cart", "cart", nodes)
		uids := func(pods []*corev1.Pod) []string {
			var out []string
			for _, p := range pods {
				out = append(out, string(p.UID))
			}
			slices.Sort(out)
			return out
		}
		ownerUIDs := func(s *corev1.Secret) []string {
			var out []string
			for _, o := range s.OwnerReferences {
				out = append(out, string(o.UID))
			}
			slices.Sort(out)
			return out
		}
		want := uids(pods)
		waitSecret(t, ns, "cart-env", fmt.Sprintf("owned by the %d pods", len(pods)), func(s *corev1.Secret) bool {
			return slices.Equal(ownerUIDs(s), want)
		})
		for i := len(nodes) - 1; i >= 1; i-- {
			gone := scaleDownOne(t, dep, pods, i)
			want := uids(pods[:i])
			s := waitSecret(t, ns, "cart-env", fmt.Sprintf("owned by the %d pods left (the garbage collector drops the pod on %s)", i, gone),
				func(s *corev1.Secret) bool { return slices.Equal(ownerUIDs(s), want) })
			t.Logf("pod on %s gone: the Secret is there, owned by %v", gone, ownerNames(s))
		}
		gone := scaleDownOne(t, dep, pods, 0)
		waitSecretGone(t, ns, "cart-env", "the last pod (on "+gone+") is gone")
	})
}

// driverIPs maps the driver pods' addresses to their nodes.
func driverIPs(t *testing.T, nodes []string) map[string]string {
	t.Helper()
	byIP := map[string]string{}
	for _, n := range nodes {
		byIP[driverPod(t, n).Status.PodIP] = n
	}
	return byIP
}

// spreadDeployment creates a Deployment of one replica per node mounting
// class (exactly one per node: a hard topology spread), and returns it and
// its Ready pods in the order of nodes. The pods' deletion costs fall with
// their node's index (the lowest goes first), so scaling down removes the
// pod of the last node first.
func spreadDeployment(t *testing.T, ns, name, class string, nodes []string) (*appsv1.Deployment, []*corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	replicas := int32(len(nodes))
	labels := map[string]string{"app": name}
	spec := podSpec("", class)
	spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
		WhenUnsatisfiable: corev1.DoNotSchedule, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}}
	dep, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := waitPods(t, ns, "app="+name, len(nodes))
	pods := make([]*corev1.Pod, len(nodes))
	for _, p := range ready {
		i := slices.Index(nodes, p.Spec.NodeName)
		if i < 0 || pods[i] != nil {
			t.Fatalf("pod %s on %s: want one replica on each of %v", p.Name, p.Spec.NodeName, nodes)
		}
		pods[i] = p
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, deletionCost, strconv.Itoa(len(nodes)-1-i))
		if _, err := client.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return dep, pods
}

// scaleDownOne scales dep to i replicas, waits until pods[i] (the pod of
// the i-th node, the cheapest to delete) is gone and the others still run,
// and returns its node.
func scaleDownOne(t *testing.T, dep *appsv1.Deployment, pods []*corev1.Pod, i int) string {
	t.Helper()
	ctx := context.Background()
	if _, err := client.AppsV1().Deployments(dep.Namespace).Patch(ctx, dep.Name, types.MergePatchType,
		[]byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, i)), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	err := poll(podTimeout, func() (bool, error) {
		_, err := client.CoreV1().Pods(dep.Namespace).Get(ctx, pods[i].Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("scaled to %d: pod %s on %s still there", i, pods[i].Name, pods[i].Spec.NodeName)
	}
	left := waitPods(t, dep.Namespace, "app="+dep.Spec.Selector.MatchLabels["app"], i)
	for _, p := range left {
		if !slices.ContainsFunc(pods[:i], func(q *corev1.Pod) bool { return q.UID == p.UID }) {
			t.Fatalf("scaled to %d: pod %s on %s is not one of the first %d", i, p.Name, p.Spec.NodeName, i)
		}
	}
	return pods[i].Spec.NodeName
}

// waitSecretGone waits until Secret ns/name is deleted (by the garbage
// collector: nothing else in these tests deletes it).
func waitSecretGone(t *testing.T, ns, name, after string) {
	t.Helper()
	var last *corev1.Secret
	err := poll(podTimeout, func() (bool, error) {
		s, err := getSecret(ns, name)
		if err == nil {
			last = s
		}
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		var owners []string
		if last != nil {
			owners = ownerNames(last)
		}
		t.Fatalf("Secret %s/%s still there after %s: owners %v", ns, name, after, owners)
	}
	t.Logf("Secret %s/%s deleted by the garbage collector after %s", ns, name, after)
}
