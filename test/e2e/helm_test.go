//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/test/ci"
)

// The Helm chart installs a working driver: a second secretfs, under its own
// driver name, installed with helm next to the one the suite deployed with
// kustomize, serves a pod. The kustomize-installed CRD, which no Helm release
// owns, is left alone and the release notes say so.
//
// Needs HELM (the helm binary) and SECRETFS_E2E_HELM_VALUES (values for this
// cluster, written by test/cluster/up.sh or test/e2e/kind.sh); skipped
// without them, or failed in CI.
func TestHelmChart(t *testing.T) {
	t.Parallel()
	helmBin, values := os.Getenv("HELM"), os.Getenv("SECRETFS_E2E_HELM_VALUES")
	if helmBin == "" || values == "" {
		ci.Missing(t, "HELM and SECRETFS_E2E_HELM_VALUES are not set (make e2e and make e2e-kind set them; helm: make deps)")
	}
	const name = "csi-helm.secretfs.dev"
	ns := newNamespace(t)
	home := t.TempDir()
	helm := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(helmBin, args...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
			"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"))
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), stderr.String())
		}
		return out.String()
	}

	notes := helm("install", "secretfs-e2e", "../../deploy/charts/secretfs", "--namespace", ns,
		"-f", values, "--set", "driverName="+name, "--wait=watcher", "--timeout", "3m")
	t.Cleanup(func() { helm("uninstall", "secretfs-e2e", "--namespace", ns, "--wait=watcher", "--timeout", "2m") })
	if !strings.Contains(notes, "CRD was left as it is: no Helm release owns it") {
		t.Errorf("release notes do not say the kustomize-installed CRD was left alone:\n%s", notes)
	}

	var node string
	err := poll(podTimeout, func() (bool, error) {
		nodes, err := client.StorageV1().CSINodes().List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, n := range nodes.Items {
			for _, d := range n.Spec.Drivers {
				if d.Name == name {
					node = n.Name
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the chart's driver %s never registered with kubelet: %v", name, err)
	}
	t.Logf("%s registered on node %s", name, node)

	createFakeClass(t, ns, "from-helm", []object{{ObjectName: "greeting", Value: "hello from the chart"}}, nil)
	spec := podSpec("", "from-helm")
	spec.Volumes[0].CSI.Driver = name
	pod, err := client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns}, Spec: spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod = waitReady(t, pod)
	if got := readVolume(t, pod)["greeting"].Content; got != "hello from the chart" {
		t.Errorf("greeting = %q through the chart-installed driver", got)
	}
	deletePod(t, pod)
}
