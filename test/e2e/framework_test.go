//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/test/ci"
)

const (
	driverName     = "csi.secretfs.dev"
	driverSA       = "secretfs-node"
	helperName     = "e2e-helper" // container of the driver pod (test/e2e/overlay)
	helperFakeDir  = "/var/run/secretfs-fake"
	helperKubelet  = "/host/kubelet"
	appImage       = "secretfs-testapp:e2e"
	mountPath      = "/mnt/secrets"
	podTimeout     = 2 * time.Minute
	cleanupTimeout = 90 * time.Second
)

var (
	restConfig      *rest.Config
	client          kubernetes.Interface
	dyn             dynamic.Interface
	driverNamespace = envOr("SECRETFS_E2E_DRIVER_NAMESPACE", "secretfs-system")
	rotationTimeout = 2 * time.Minute
	classGVR        = schema.GroupVersionResource{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasses"}
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// missing says which prerequisite is missing; TestMain then runs only
// TestPrerequisites, so the package reports a skip (a failure in CI) rather
// than "ok" with nothing run.
var missing string

func TestPrerequisites(t *testing.T) {
	if missing != "" {
		ci.Missing(t, "%s", missing)
	}
}

func TestMain(m *testing.M) {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		missing = "KUBECONFIG is not set; start a cluster with `make cluster-up` or run `make e2e`"
		os.Exit(ci.RunOnly(m, "TestPrerequisites"))
	}
	var err error
	if restConfig, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	restConfig.QPS, restConfig.Burst = 50, 100
	client = kubernetes.NewForConfigOrDie(restConfig)
	dyn = dynamic.NewForConfigOrDie(restConfig)
	if v := os.Getenv("SECRETFS_E2E_ROTATION_TIMEOUT"); v != "" {
		if rotationTimeout, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: SECRETFS_E2E_ROTATION_TIMEOUT:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newNamespace creates a namespace for one test, waits for its default
// service account, and deletes it (waiting) when the test ends.
func newNamespace(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "secretfs-e2e-", Labels: map[string]string{"secretfs.dev/e2e": "true"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	name := ns.Name
	t.Cleanup(func() {
		err := client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace %s: %v", name, err)
			return
		}
		err = poll(cleanupTimeout, func() (bool, error) {
			_, err := client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("namespace %s not gone after %v", name, cleanupTimeout)
		}
	})
	// Pods are refused until the service-account controller made "default".
	err = poll(time.Minute, func() (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s has no default service account after 1m (is kube-controller-manager running?)", name)
	}
	return name
}

func poll(timeout time.Duration, cond func() (bool, error)) error {
	return wait.PollUntilContextTimeout(context.Background(), 250*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return cond() })
}

// object is one item of the fake backend's objects parameter.
type object struct {
	ObjectName     string `json:"objectName"`
	ObjectAlias    string `json:"objectAlias,omitempty"`
	FilePermission string `json:"filePermission,omitempty"`
	Value          string `json:"value,omitempty"`
}

// createFakeClass creates a SecretProviderClass for the fake backend.
func createFakeClass(t *testing.T, ns, name string, objects []object, extra map[string]string) {
	t.Helper()
	createClass(t, ns, name, "fake", fakeParams(t, objects, extra))
}

// fakeParams are the fake backend's class parameters for objects.
func fakeParams(t *testing.T, objects []object, extra map[string]string) map[string]any {
	t.Helper()
	list, err := yaml.Marshal(objects)
	if err != nil {
		t.Fatal(err)
	}
	params := map[string]any{"objects": string(list)}
	for k, v := range extra {
		params[k] = v
	}
	return params
}

func createClass(t *testing.T, ns, name, provider string, params map[string]any) {
	t.Helper()
	class := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1",
		"kind":       "SecretProviderClass",
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       map[string]any{"provider": provider, "parameters": params},
	}}
	if _, err := dyn.Resource(classGVR).Namespace(ns).Create(context.Background(), class, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating SecretProviderClass %s/%s: %v", ns, name, err)
	}
}

// podSpec is an app that mounts class at mountPath and sleeps,
// running as service account sa ("" for the namespace's default).
func podSpec(sa, class string) corev1.PodSpec {
	grace := int64(1)
	readOnly, no := true, false
	return corev1.PodSpec{
		ServiceAccountName:            sa,
		TerminationGracePeriodSeconds: &grace,
		// The driver gets the pod's token from kubelet (CSIDriver
		// tokenRequests), not from a mounted token.
		AutomountServiceAccountToken: &no,
		EnableServiceLinks:           &no,
		Containers: []corev1.Container{{
			Name:            "app",
			Image:           appImage,
			ImagePullPolicy: corev1.PullNever,
			Command:         []string{"/testapp", "sleep"},
			VolumeMounts:    []corev1.VolumeMount{{Name: "secrets", MountPath: mountPath, ReadOnly: true}},
		}},
		Volumes: []corev1.Volume{{
			Name: "secrets",
			VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver:           driverName,
				ReadOnly:         &readOnly,
				VolumeAttributes: map[string]string{"secretProviderClass": class},
			}},
		}},
	}
}

// createAppPod creates a pod that mounts class at mountPath and
// sleeps, as the namespace's default service account.
func createAppPod(t *testing.T, ns, name, class string) *corev1.Pod {
	t.Helper()
	return createAppPodAs(t, ns, name, "", class)
}

// createAppPodAs is createAppPod with service account sa.
func createAppPodAs(t *testing.T, ns, name, sa, class string) *corev1.Pod {
	t.Helper()
	pod, err := client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       podSpec(sa, class),
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// waitReady waits until the pod is Ready and returns it.
func waitReady(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	var cur *corev1.Pod
	err := poll(podTimeout, func() (bool, error) {
		p, err := client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		cur = p
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod ended in phase %s", p.Status.Phase)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not Ready: %v\nevents:\n%s", pod.Namespace, pod.Name, err, eventText(pod))
	}
	return cur
}

// deletePod deletes a pod and waits until the API no longer has it.
func deletePod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	if err := client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("deleting pod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	err := poll(podTimeout, func() (bool, error) {
		_, err := client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s still exists %v after deletion", pod.Namespace, pod.Name, podTimeout)
	}
}

// podEvents returns the events about a pod.
func podEvents(pod *corev1.Pod) []corev1.Event {
	sel := fields.Set{"involvedObject.name": pod.Name, "involvedObject.namespace": pod.Namespace}.AsSelector().String()
	list, err := client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return nil
	}
	return list.Items
}

func eventText(pod *corev1.Pod) string {
	var b strings.Builder
	for _, e := range podEvents(pod) {
		fmt.Fprintf(&b, "  %s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

// waitEvent waits for an event about pod with the given reason whose message
// contains every string in want, and returns its message.
func waitEvent(t *testing.T, pod *corev1.Pod, reason string, want ...string) string {
	t.Helper()
	var msg string
	err := poll(podTimeout, func() (bool, error) {
		for _, e := range podEvents(pod) {
			if e.Reason != reason {
				continue
			}
			if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(e.Message, w) }) {
				msg = e.Message
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s event for pod %s/%s containing %q; events:\n%s", reason, pod.Namespace, pod.Name, want, eventText(pod))
	}
	return msg
}

// execIn runs a command in a container and returns its stdout.
func execIn(ctx context.Context, ns, pod, container string, cmd ...string) (string, error) {
	var stdout bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := streamIn(ctx, ns, pod, container, &stdout, cmd...)
	return stdout.String(), err
}

// streamIn runs a command in a container, copying its stdout to stdout as
// it comes, until it ends or ctx is done.
func streamIn(ctx context.Context, ns, pod, container string, stdout io.Writer, cmd ...string) error {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(restConfig, "GET", req.URL().String())
	if err != nil {
		return err
	}
	spdy, err := remotecommand.NewSPDYExecutor(restConfig, "POST", req.URL())
	if err != nil {
		return err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: stdout, Stderr: &stderr}); err != nil {
		return fmt.Errorf("exec %v in %s/%s[%s]: %w (stderr: %s)", cmd, ns, pod, container, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// execJSON runs a testapp subcommand and decodes its JSON output into out.
func execJSON(t *testing.T, ns, pod, container string, out any, cmd ...string) {
	t.Helper()
	stdout, err := execIn(context.Background(), ns, pod, container, append([]string{"/testapp"}, cmd...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("testapp %v printed %q: %v", cmd, stdout, err)
	}
}

// file is what testapp dump reports for one file.
type file struct {
	Mode    string `json:"mode"`
	Content string `json:"content"`
}

// readVolume returns the files the app container of pod sees in its volume.
func readVolume(t *testing.T, pod *corev1.Pod) map[string]file {
	t.Helper()
	var files map[string]file
	execJSON(t, pod.Namespace, pod.Name, "app", &files, "dump", mountPath)
	return files
}

// driverPod returns the Ready driver pod on nodeName.
func driverPod(t *testing.T, nodeName string) *corev1.Pod {
	t.Helper()
	var found *corev1.Pod
	err := poll(podTimeout, func() (bool, error) {
		list, err := client.CoreV1().Pods(driverNamespace).List(context.Background(), metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=secretfs,app.kubernetes.io/component=node",
			FieldSelector: "spec.nodeName=" + nodeName,
		})
		if err != nil {
			return false, nil
		}
		for i := range list.Items {
			p := &list.Items[i]
			if p.DeletionTimestamp != nil {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					found = p
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no Ready secretfs driver pod on node %s in namespace %s", nodeName, driverNamespace)
	}
	return found
}

// helper runs a testapp subcommand in the driver pod's e2e-helper container
// on nodeName and decodes its JSON output.
func helper(t *testing.T, nodeName string, out any, cmd ...string) {
	t.Helper()
	d := driverPod(t, nodeName)
	execJSON(t, d.Namespace, d.Name, helperName, out, cmd...)
}

// writeFakeData sets the fake backend's value of objectName in ns on nodeName.
func writeFakeData(t *testing.T, nodeName, ns, objectName, value string) {
	t.Helper()
	d := driverPod(t, nodeName)
	path := helperFakeDir + "/" + ns + "/" + objectName
	if _, err := execIn(context.Background(), d.Namespace, d.Name, helperName, "/testapp", "write", path, value); err != nil {
		t.Fatal(err)
	}
}

// mount is what testapp mounts reports for one mount.
type mount struct {
	Path    string `json:"path"`
	FSType  string `json:"fstype"`
	Options string `json:"options"`
	Super   string `json:"super"`
}

// nodeMounts returns the mounts on nodeName whose path contains s, as the
// host sees them (through the driver pod's e2e-helper).
func nodeMounts(t *testing.T, nodeName, s string) []mount {
	t.Helper()
	var m []mount
	helper(t, nodeName, &m, "mounts", s)
	return m
}

// removeFakeData removes the fake backend's data file of objectName in ns.
func removeFakeData(t *testing.T, nodeName, ns, objectName string) {
	t.Helper()
	d := driverPod(t, nodeName)
	path := helperFakeDir + "/" + ns + "/" + objectName
	if _, err := execIn(context.Background(), d.Namespace, d.Name, helperName, "/testapp", "rm", path); err != nil {
		t.Fatal(err)
	}
}

// secretTraces returns the mounts of pod's volumes and the files under the
// kubelet root that contain any of values.
func secretTraces(t *testing.T, nodeName string, podUID string, values ...string) (mounts []mount, files []string) {
	t.Helper()
	mounts = nodeMounts(t, nodeName, podUID)
	for _, v := range values {
		var found []string
		helper(t, nodeName, &found, "find", helperKubelet, v)
		files = append(files, found...)
	}
	return mounts, files
}

// assertNoTraces waits until nothing of pod's volume is left on its node:
// no mount under the pod's directory and no file under the kubelet root
// containing any of values.
func assertNoTraces(t *testing.T, pod *corev1.Pod, values ...string) {
	t.Helper()
	var (
		mounts []mount
		files  []string
	)
	err := poll(cleanupTimeout, func() (bool, error) {
		mounts, files = secretTraces(t, pod.Spec.NodeName, string(pod.UID), values...)
		return len(mounts) == 0 && len(files) == 0, nil
	})
	if err != nil {
		t.Fatalf("%v after pod %s/%s was deleted: mounts still present %+v, files with secret content %q",
			cleanupTimeout, pod.Namespace, pod.Name, mounts, files)
	}
}

// podNodes returns the distinct nodes pods run on, in order.
func podNodes(pods []*corev1.Pod) []string {
	var nodes []string
	for _, p := range pods {
		if !slices.Contains(nodes, p.Spec.NodeName) {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	return nodes
}
