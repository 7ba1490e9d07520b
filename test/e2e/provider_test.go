//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// extProvider is the external provider of deploy/examples/external-provider:
// `secretfs provider --backend fake` on <providers dir>/extfake.sock.
const (
	extProvider   = "extfake"
	extProviderDS = "secretfs-provider-extfake"
)

// A class whose provider is not built in is served by an external provider
// over the provider protocol: the example DaemonSet serves the fake backend
// as "extfake" on a socket in the directory the driver searches. The pod
// gets its files with their modes, and nothing is left once it is gone.
func TestExternalProvider(t *testing.T) {
	t.Parallel()
	ds, err := client.AppsV1().DaemonSets(driverNamespace).Get(context.Background(), extProviderDS, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the external provider's DaemonSet %s/%s (deploy/examples/external-provider, deployed by test/e2e/overlay): %v",
			driverNamespace, extProviderDS, err)
	}
	if ep := containerArgs(ds, "provider")["--endpoint"]; !strings.HasSuffix(ep, "/"+extProvider+".sock") {
		t.Fatalf("the external provider serves %q; want a socket named %s.sock", ep, extProvider)
	}
	if err := poll(podTimeout, func() (bool, error) {
		d, err := client.AppsV1().DaemonSets(driverNamespace).Get(context.Background(), extProviderDS, metav1.GetOptions{})
		return err == nil && d.Status.NumberReady == d.Status.DesiredNumberScheduled && d.Status.NumberReady > 0, nil
	}); err != nil {
		t.Fatalf("the external provider's DaemonSet is not ready")
	}

	ns := newNamespace(t)
	objects, want := threeObjects()
	createClass(t, ns, "external", extProvider, fakeParams(t, objects, nil))
	start := time.Now()
	pod := waitReady(t, createAppPod(t, ns, "app", "external"))
	t.Logf("pod Ready with a volume from the external provider %v after creation", time.Since(start).Round(time.Millisecond))
	assertFiles(t, pod, want)

	deletePod(t, pod)
	assertNoTraces(t, pod, values(want)...)
}

// writerProviderDS is test/e2e/overlay/provider-writer.yaml: an external
// provider, "writer", that writes the files into the volume itself (the AWS
// provider's default mode) from the second provider directory.
const writerProviderDS = "secretfs-provider-writer"

// A provider that writes the files itself gets the pod's tmpfs as its
// target: the pod reads what it wrote, and nothing is left once it is gone.
func TestProviderWritesFiles(t *testing.T) {
	t.Parallel()
	if err := poll(podTimeout, func() (bool, error) {
		d, err := client.AppsV1().DaemonSets(driverNamespace).Get(context.Background(), writerProviderDS, metav1.GetOptions{})
		return err == nil && d.Status.NumberReady == d.Status.DesiredNumberScheduled && d.Status.NumberReady > 0, nil
	}); err != nil {
		t.Fatalf("the DaemonSet %s/%s (test/e2e/overlay/provider-writer.yaml) is not ready", driverNamespace, writerProviderDS)
	}
	ns := newNamespace(t)
	suffix := randHex(6)
	pw, key := "prod/db/password-"+suffix, "api-key-"+suffix
	createClass(t, ns, "writer", "writer", map[string]any{
		"objects": "- objectName: " + pw + "\n  objectType: secretsmanager\n" +
			"- objectName: " + key + "\n  objectType: secretsmanager\n  objectAlias: key.txt\n  filePermission: \"0440\"\n",
	})
	pod := waitReady(t, createAppPod(t, ns, "app", "writer"))
	want := map[string]file{
		strings.ReplaceAll(pw, "/", "_"): {Mode: "0644", Content: "fake:" + pw},
		"key.txt":                        {Mode: "0440", Content: "fake:" + key},
	}
	assertFiles(t, pod, want)

	deletePod(t, pod)
	assertNoTraces(t, pod, values(want)...)
}
