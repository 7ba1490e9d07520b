//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"path"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Refresh now: a class with a 24h rotation interval does not pick up a
// changed backend value by itself; annotating the class with
// secretfs.dev/refresh-requested refreshes its mounted volume within seconds,
// and the node's `secretfs status` records the request.
func TestRefreshRequestedByAnnotation(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	v1 := "v1-" + randHex(8)
	createFakeClass(t, ns, "slow", []object{{ObjectName: "token", Value: v1}},
		map[string]string{"secretfs.dev/rotationInterval": "24h"})
	pod := waitReady(t, createAppPod(t, ns, "app", "slow"))
	assertFiles(t, pod, map[string]file{"token": {Mode: "0644", Content: v1}})

	v2 := "v2-" + randHex(8)
	writeFakeData(t, pod.Spec.NodeName, ns, "token", v2)
	defer removeFakeData(t, pod.Spec.NodeName, ns, "token")
	time.Sleep(5 * time.Second) // kubelet republishes meanwhile; the class's interval is not due
	if got := readVolume(t, pod)["token"].Content; got != v1 {
		t.Fatalf("the volume changed without a request: %q", got)
	}

	patch := []byte(`{"metadata":{"annotations":{"secretfs.dev/refresh-requested":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}}}`)
	if _, err := dyn.Resource(classGVR).Namespace(ns).Patch(context.Background(), "slow", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := poll(30*time.Second, func() (bool, error) { return readVolume(t, pod)["token"].Content == v2, nil }); err != nil {
		t.Fatalf("the requested refresh did not reach the volume: %v", err)
	}
	t.Logf("refreshed %v after the annotation changed", time.Since(start).Round(100*time.Millisecond))

	var vols []struct {
		Namespace, Pod, RequestedBy string
		LastRequestedRefresh        time.Time
	}
	dp := driverPod(t, pod.Spec.NodeName)
	socket := ""
	for _, c := range dp.Spec.Containers {
		for _, a := range c.Args {
			if ep, ok := strings.CutPrefix(a, "--endpoint=unix://"); ok && c.Name == "driver" {
				socket = path.Join(path.Dir(ep), "status.sock")
			}
		}
	}
	if socket == "" {
		t.Fatalf("driver pod %s has no --endpoint=unix://... argument", dp.Name)
	}
	out, err := execIn(context.Background(), driverNamespace, dp.Name, "driver", "/bin/secretfs", "status", "-o", "json", "-socket", socket)
	if err != nil {
		t.Fatalf("secretfs status in %s: %v", dp.Name, err)
	}
	if err := json.Unmarshal([]byte(out), &vols); err != nil {
		t.Fatalf("secretfs status -o json: %v: %.300s", err, out)
	}
	for _, v := range vols {
		if v.Namespace == ns && v.Pod == "app" {
			if v.RequestedBy != "class annotation" || v.LastRequestedRefresh.IsZero() {
				t.Fatalf("status does not record the request: %+v", v)
			}
			return
		}
	}
	t.Fatalf("status lists no volume of pod %s/app: %+v", ns, vols)
}
