//go:build e2e

package e2e

import (
	"context"
	"os/exec"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/test/ci"
)

// Draining a node (`kubectl drain`) takes its pods' secrets off it: a
// Deployment of 3 replicas over the nodes, one node drained, and then that
// node holds no mount of the evicted pods, no cache entry and no open
// watch of the Secret, while the replacement pods mount it on the others.
func TestDrainTakesSecretsOffTheNode(t *testing.T) {
	ctx := context.Background()
	nodes := severalNodes(t)
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		ci.Missing(t, "kubectl is not on PATH (test/cluster/exec.sh puts the cluster's first)")
	}
	auditPath := auditLogPath(t)
	ns := newNamespace(t)
	value := dbSecretForReader(t, ns, "drain-")

	byIP := map[string]string{}
	drivers, base := map[string]*corev1.Pod{}, map[string]driverMetrics{}
	for _, n := range nodes {
		drivers[n] = driverPod(t, n)
		byIP[drivers[n].Status.PodIP] = n
		base[n] = scrapeDriver(t, drivers[n])
	}

	replicas := int32(3)
	labels := map[string]string{"app": "drained"}
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "drained"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec("reader", "db")}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitPods(t, ns, "app=drained", 3)
	victim := pods[0].Spec.NodeName
	var evicted []*corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName == victim {
			evicted = append(evicted, p)
		}
	}
	t.Logf("replicas on nodes %v; draining %s (%d of them)", podNodes(pods), victim, len(evicted))

	t.Cleanup(func() {
		if out, err := exec.Command(kubectl, "uncordon", victim).CombinedOutput(); err != nil {
			t.Errorf("kubectl uncordon %s: %v: %s", victim, err, out)
		}
	})
	start := time.Now()
	out, err := exec.Command(kubectl, "drain", victim, "--ignore-daemonsets", "--delete-emptydir-data",
		"--pod-selector=app=drained", "--timeout=2m").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl drain %s: %v: %s", victim, err, out)
	}
	t.Logf("kubectl drain %s took %v", victim, time.Since(start).Round(100*time.Millisecond))

	moved := waitPods(t, ns, "app=drained", 3)
	for _, p := range moved {
		if p.Spec.NodeName == victim {
			t.Errorf("pod %s still on the drained node %s", p.Name, victim)
		}
		if got := readVolume(t, p)["password"].Content; got != value {
			t.Errorf("pod %s on %s reads %q", p.Name, p.Spec.NodeName, got)
		}
	}
	for _, p := range evicted {
		if m := nodeMounts(t, victim, string(p.UID)); len(m) != 0 {
			t.Errorf("evicted pod %s: node %s still has its mounts %+v", p.Name, victim, m)
		}
	}
	var entries float64
	var w map[string]int
	if err := poll(time.Minute, func() (bool, error) {
		entries, w = scrapeDriver(t, drivers[victim]).cacheEntries-base[victim].cacheEntries, openWatches(t, auditPath, ns, "db", byIP)
		return entries == 0 && w[victim] == 0, nil
	}); err != nil {
		t.Fatalf("drained node %s: %v new cache entries, open watches %v; want none there", victim, entries, w)
	}
	t.Logf("after the drain: replicas on %v, open watches of the Secret by node %v", podNodes(moved), w)
	for _, n := range podNodes(moved) {
		if w[n] < 1 {
			t.Errorf("node %s runs replicas but has no open watch of the Secret: %v", n, w)
		}
	}
}
