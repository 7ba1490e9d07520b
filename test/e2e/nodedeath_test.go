//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/test/ci"
)

// A node dies: its kubelet, containerd and driver are killed (-9) with
// secret volumes mounted, its pods are force-deleted, and the node comes
// back. Then nothing of the dead pods' secrets is left on it (no mount, no
// file with the value under the kubelet root), and it serves new pods.
// SECRETFS_E2E_NODE_CTL names the local cluster's test/cluster/node.sh,
// which kills and restarts a node (make e2e sets it).
func TestNodeThatDiedLeavesNothingOfGonePods(t *testing.T) {
	ctx := context.Background()
	ctl := os.Getenv("SECRETFS_E2E_NODE_CTL")
	if ctl == "" {
		ci.Missing(t, "SECRETFS_E2E_NODE_CTL is not set (the local cluster's test/cluster/node.sh, which make e2e sets)")
	}
	nodes := severalNodes(t)
	victim := nodes[len(nodes)-1]
	index, ok := strings.CutPrefix(victim, "secretfs-node-")
	if !ok {
		ci.Missing(t, "node %s is not a node of the local cluster (secretfs-node-<i>)", victim)
	}
	ns := newNamespace(t)
	value := dbSecretForReader(t, ns, "dies-")
	pinned := func(name string) *corev1.Pod {
		spec := podSpec("reader", "db")
		spec.NodeSelector = map[string]string{"kubernetes.io/hostname": victim}
		p, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return waitReady(t, p)
	}
	dead := []*corev1.Pod{pinned("a"), pinned("b")}
	for _, p := range dead {
		if m := nodeMounts(t, victim, string(p.UID)); len(m) != 1 {
			t.Fatalf("pod %s: mounts on %s %+v, want its volume", p.Name, victim, m)
		}
	}

	run := func(args ...string) {
		t.Helper()
		start := time.Now()
		out, err := exec.Command(ctl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v: %s", ctl, args, err, out)
		}
		t.Logf("%s %v took %v", ctl, args, time.Since(start).Round(100*time.Millisecond))
	}
	run("kill", index)
	// The node is back whatever happens next, for the tests after this one.
	t.Cleanup(func() { _ = exec.Command(ctl, "start", index).Run() })
	zero := int64(0)
	for _, p := range dead {
		if err := client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatalf("force-deleting pod %s: %v", p.Name, err)
		}
	}
	run("start", index)
	// The node's driver pod runs again (kubelet restarts its containers).
	start := time.Now()
	if err := poll(3*time.Minute, func() (bool, error) {
		d := driverPod(t, victim)
		_, err := execIn(ctx, d.Namespace, d.Name, helperName, "/testapp", "mounts", "none")
		return err == nil, nil
	}); err != nil {
		t.Fatalf("the driver pod on %s does not answer after the node came back", victim)
	}
	waitRegistered(t, victim)
	t.Logf("node %s back: driver answering and registered %v after the restart", victim, time.Since(start).Round(100*time.Millisecond))

	for _, p := range dead {
		var mounts []mount
		var files []string
		if err := poll(2*time.Minute, func() (bool, error) {
			mounts, files = secretTraces(t, victim, string(p.UID), value)
			return len(mounts) == 0 && len(files) == 0, nil
		}); err != nil {
			t.Fatalf("node %s back: the gone pod %s still has mounts %+v and files with the value %v", victim, p.Name, mounts, files)
		}
	}
	t.Logf("node %s back: the gone pods' volumes were removed %v after it restarted", victim, time.Since(start).Round(100*time.Millisecond))

	fresh := pinned("c")
	if got := readVolume(t, fresh)["password"].Content; got != value {
		t.Fatalf("new pod on %s reads %q", victim, got)
	}
	deletePod(t, fresh)
}
