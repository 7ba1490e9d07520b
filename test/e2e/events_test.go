//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// A refresh that fails after the pod is running (here: the class now denies
// the pod's service account) keeps the pod's last good files and shows on
// the pod as a Warning SecretRefreshFailed event from the driver.
func TestRefreshFailureEvent(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	value := "v1-" + randHex(8)
	createFakeClass(t, ns, "revoked", []object{{ObjectName: "token", Value: value, FilePermission: "0440"}}, nil)
	pod := waitReady(t, createAppPod(t, ns, "app", "revoked"))
	assertFiles(t, pod, map[string]file{"token": {Mode: "0440", Content: value}})

	// The fake backend's deny parameter: the pod's identity is revoked.
	patch := []byte(`{"spec":{"parameters":{"deny":"default"}}}`)
	if _, err := dyn.Resource(classGVR).Namespace(ns).Patch(context.Background(), "revoked", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("denying the pod's service account in the class: %v", err)
	}
	start := time.Now()
	var ev corev1.Event
	err := poll(rotationTimeout, func() (bool, error) {
		for _, e := range podEvents(pod) {
			if e.Reason == "SecretRefreshFailed" {
				ev = e
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no SecretRefreshFailed event on pod %s/%s %v after the class changed; events:\n%s", ns, pod.Name, rotationTimeout, eventText(pod))
	}
	t.Logf("SecretRefreshFailed event %v after the class denied the pod: %s", time.Since(start).Round(100*time.Millisecond), ev.Message)
	if ev.Type != corev1.EventTypeWarning || ev.Source.Component != driverName || ev.Source.Host != pod.Spec.NodeName {
		t.Errorf("event type %q source %+v, want Warning from %s on %s", ev.Type, ev.Source, driverName, pod.Spec.NodeName)
	}
	if o := ev.InvolvedObject; o.Kind != "Pod" || o.UID != pod.UID {
		t.Errorf("event is about %s %s/%s uid %s, not the pod", o.Kind, o.Namespace, o.Name, o.UID)
	}
	for _, want := range []string{`SecretProviderClass "revoked"`, "PermissionDenied", "keeps its last good content"} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("event message %q lacks %q", ev.Message, want)
		}
	}
	if strings.Contains(ev.Message, value) {
		t.Errorf("event message contains the secret value")
	}

	// The pod still runs on its last good content.
	assertFiles(t, pod, map[string]file{"token": {Mode: "0440", Content: value}})
	p, err := client.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodRunning {
		t.Errorf("pod is %s after a failed refresh, want Running", p.Status.Phase)
	}

	deletePod(t, p)
	assertNoTraces(t, pod, value)
}
