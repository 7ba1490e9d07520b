//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// rotationUpdates is how many Secret updates TestKubernetesBackend times.
const rotationUpdates = 20

// The kubernetes backend, as a user runs it: a Deployment's pod reads a
// Secret of its namespace with its own service-account token, which a Role
// allows to get and watch exactly that Secret. Binary data arrives intact;
// an update through the API reaches the running pod's file within seconds
// (watch-driven, no republish needed); a pod whose service account has no
// Role never starts, and its events say who may not read what.
func TestKubernetesBackend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	password := "pw-" + randHex(8)
	blob := append([]byte{0x00, 0xff, 0xfe, '\n', 0x80}, []byte(randHex(8))...) // not UTF-8
	secret, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Data:       map[string][]byte{"password": []byte(password), "blob": blob},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Secret: %v", err)
	}
	createServiceAccount(t, ns, "reader")
	createServiceAccount(t, ns, "stranger")
	grantSecret(t, ns, "reader", "db", "get", "watch")
	objects := []map[string]any{
		{"secretName": "db", "key": "password", "path": "db/password", "filePermission": "0400"},
		{"secretName": "db", "key": "blob", "path": "blob.bin"},
	}
	list, err := yaml.Marshal(objects)
	if err != nil {
		t.Fatal(err)
	}
	createClass(t, ns, "db", "kubernetes", map[string]any{"objects": string(list)})

	start := time.Now()
	dep := createDeployment(t, ns, "app", "reader", "db")
	pod := waitDeploymentPod(t, dep)
	t.Logf("Deployment pod Ready with its volume %v after creation", time.Since(start).Round(time.Millisecond))
	assertBinary := func() {
		t.Helper()
		if mode, raw := catFile(t, pod, "blob.bin"); mode != "0644" || !bytes.Equal(raw, blob) {
			t.Fatalf("blob.bin = %s %x, want 0644 %x", mode, raw, blob)
		}
	}
	if got := readVolume(t, pod); len(got) != 2 || got["db/password"] != (file{Mode: "0400", Content: password}) {
		t.Fatalf("pod sees %v; want db/password (0400) and blob.bin", got)
	}
	assertBinary()

	// Updates through the API, as `kubectl edit secret` makes them. An app
	// in the pod polls the file every millisecond and reports when it sees
	// each new value.
	watcher := watchFile(t, pod, mountPath+"/db/password", rotationUpdates)
	if first := watcher.next(t); first.Content != password {
		t.Fatalf("before the updates the pod sees %q", first.Content)
	}
	var latencies []time.Duration
	values := []string{password}
	for i := range rotationUpdates {
		value := fmt.Sprintf("pw%d-%s", i+1, randHex(8))
		values = append(values, value)
		sent := time.Now()
		secret = updateSecret(t, secret, "password", value)
		seen := watcher.next(t)
		if seen.Content != value {
			t.Fatalf("update %d: the pod saw %q, want %q", i+1, seen.Content, value)
		}
		latencies = append(latencies, time.Unix(0, seen.UnixNano).Sub(sent))
	}
	watcher.wait(t)
	t.Logf("Secret update -> new file content in the pod, %d updates: %s", len(latencies), summarize(latencies))
	if got := readVolume(t, pod)["db/password"]; got != (file{Mode: "0400", Content: values[len(values)-1]}) {
		t.Fatalf("after the updates db/password is %+v", got)
	}
	assertBinary()

	// Without a Role the pod never gets its volume.
	stranger := createAppPodAs(t, ns, "stranger", "stranger", "db")
	msg := waitEvent(t, stranger, "FailedMount", "PermissionDenied", "service account "+ns+"/stranger", "Secret "+ns+"/db")
	t.Logf("event: %s", msg)
	if slices.ContainsFunc(values, func(v string) bool { return strings.Contains(msg, v) }) {
		t.Fatalf("event reveals a secret value: %s", msg)
	}
	p, err := client.CoreV1().Pods(ns).Get(ctx, stranger.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending {
		t.Fatalf("pod without access to the Secret is %s, want Pending", p.Status.Phase)
	}
	mounts, files := secretTraces(t, p.Spec.NodeName, string(p.UID), values...)
	if len(mounts) != 0 {
		t.Fatalf("a refused pod has mounts %+v", mounts)
	}
	// Only the reader pod's volume holds a value of the Secret.
	for _, f := range files {
		if !strings.Contains(f, string(pod.UID)) {
			t.Fatalf("%s on the node holds a value of the Secret; only pod %s's volume may", f, pod.Name)
		}
	}
	deletePod(t, p)

	deleteDeployment(t, dep)
	if err := poll(podTimeout, func() (bool, error) {
		_, err := client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("the Deployment's pod %s is still there", pod.Name)
	}
	assertNoTraces(t, pod, append(values, string(blob[5:]))...)
}

func createServiceAccount(t *testing.T, ns, name string) {
	t.Helper()
	_, err := client.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating service account %s/%s: %v", ns, name, err)
	}
}

// grantSecret lets service account sa use verbs on exactly the Secret name.
func grantSecret(t *testing.T, ns, sa, name string, verbs ...string) {
	t.Helper()
	ctx := context.Background()
	role := "read-" + name
	_, err := client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{name}, Verbs: verbs}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Role: %v", err)
	}
	_, err = client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa + "-" + role},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: ns}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating RoleBinding: %v", err)
	}
}

// updateSecret sets key of the Secret with a client-go Update, as kubectl
// edit does, re-reading it on a conflict, and returns the stored Secret.
func updateSecret(t *testing.T, s *corev1.Secret, key, value string) *corev1.Secret {
	t.Helper()
	ctx := context.Background()
	cur := s.DeepCopy()
	for range 5 {
		cur.Data[key] = []byte(value)
		out, err := client.CoreV1().Secrets(cur.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
		if err == nil {
			return out
		}
		if !apierrors.IsConflict(err) {
			t.Fatalf("updating Secret %s/%s: %v", s.Namespace, s.Name, err)
		}
		if cur, err = client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Fatalf("updating Secret %s/%s: conflicts after 5 tries", s.Namespace, s.Name)
	return nil
}

func createDeployment(t *testing.T, ns, name, sa, class string) *appsv1.Deployment {
	t.Helper()
	one := int32(1)
	labels := map[string]string{"app": name}
	dep, err := client.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: podSpec(sa, class)},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Deployment %s/%s: %v", ns, name, err)
	}
	return dep
}

// waitDeploymentPod waits for the Deployment to be available and returns
// its one Ready pod.
func waitDeploymentPod(t *testing.T, dep *appsv1.Deployment) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	sel := metav1.FormatLabelSelector(dep.Spec.Selector)
	var pods []corev1.Pod
	err := poll(podTimeout, func() (bool, error) {
		d, err := client.AppsV1().Deployments(dep.Namespace).Get(ctx, dep.Name, metav1.GetOptions{})
		if err != nil || d.Status.AvailableReplicas != 1 {
			return false, nil
		}
		list, err := client.CoreV1().Pods(dep.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, nil
		}
		pods = slices.DeleteFunc(list.Items, func(p corev1.Pod) bool { return p.DeletionTimestamp != nil })
		return len(pods) == 1, nil
	})
	if err != nil {
		var events strings.Builder
		for i := range pods {
			events.WriteString(eventText(&pods[i]))
		}
		t.Fatalf("Deployment %s/%s has no available pod after %v; pod events:\n%s", dep.Namespace, dep.Name, podTimeout, events.String())
	}
	return waitReady(t, &pods[0])
}

func deleteDeployment(t *testing.T, dep *appsv1.Deployment) {
	t.Helper()
	bg := metav1.DeletePropagationBackground
	err := client.AppsV1().Deployments(dep.Namespace).Delete(context.Background(), dep.Name, metav1.DeleteOptions{PropagationPolicy: &bg})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("deleting Deployment %s/%s: %v", dep.Namespace, dep.Name, err)
	}
}

// catFile returns the mode and bytes of a file in pod's volume.
func catFile(t *testing.T, pod *corev1.Pod, name string) (string, []byte) {
	t.Helper()
	var raw struct {
		Mode   string `json:"mode"`
		Base64 string `json:"base64"`
	}
	execJSON(t, pod.Namespace, pod.Name, "app", &raw, "cat", mountPath+"/"+name)
	data, err := base64.StdEncoding.DecodeString(raw.Base64)
	if err != nil {
		t.Fatal(err)
	}
	return raw.Mode, data
}

// seen is a line of `testapp watch`.
type seen struct {
	Content  string `json:"content"`
	UnixNano int64  `json:"unixNano"`
}

// fileWatcher streams `testapp watch` from the app container of a pod.
type fileWatcher struct {
	lines chan seen
	done  chan error
}

// watchFile starts `testapp watch path n` in pod; next returns its lines
// (the content now, then each change) and wait its end.
func watchFile(t *testing.T, pod *corev1.Pod, path string, n int) *fileWatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pr, pw := io.Pipe()
	w := &fileWatcher{lines: make(chan seen, n+1), done: make(chan error, 1)}
	timeout := rotationTimeout * time.Duration(n)
	go func() {
		err := streamIn(ctx, pod.Namespace, pod.Name, "app", pw, "/testapp", "watch", path, fmt.Sprint(n), timeout.String())
		pw.CloseWithError(err)
		w.done <- err
	}()
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var s seen
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				w.lines <- s
			}
		}
	}()
	return w
}

func (w *fileWatcher) next(t *testing.T) seen {
	t.Helper()
	select {
	case s, ok := <-w.lines:
		if !ok {
			t.Fatalf("testapp watch ended early: %v", <-w.done)
		}
		return s
	case <-time.After(rotationTimeout):
		t.Fatalf("the pod saw no change of its file within %v", rotationTimeout)
	}
	return seen{}
}

func (w *fileWatcher) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(rotationTimeout):
		t.Fatal("testapp watch did not end")
	}
}

// summarize formats latencies as p50/p90/p99/max.
func summarize(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v, min %v", r(q(0.50)), r(q(0.90)), r(q(0.99)), r(s[len(s)-1]), r(s[0]))
}
