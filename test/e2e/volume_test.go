//go:build e2e

package e2e

import (
	"context"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// threeObjects returns a class's objects with fresh random values and the
// files (path -> mode, content) an app must see for them.
func threeObjects() ([]object, map[string]file) {
	pw, crt, cfg := "pw-"+randHex(8), "crt-"+randHex(8), "cfg-"+randHex(8)
	objects := []object{
		{ObjectName: "db-password", Value: pw, FilePermission: "0440"},
		{ObjectName: "tls-crt", ObjectAlias: "tls/tls.crt", Value: crt, FilePermission: "0400"},
		{ObjectName: "config", Value: cfg},
	}
	want := map[string]file{
		"db-password": {Mode: "0440", Content: pw},
		"tls/tls.crt": {Mode: "0400", Content: crt},
		"config":      {Mode: "0644", Content: cfg},
	}
	return objects, want
}

func values(files map[string]file) []string {
	var v []string
	for _, f := range files {
		v = append(v, f.Content)
	}
	slices.Sort(v)
	return v
}

func assertFiles(t *testing.T, pod *corev1.Pod, want map[string]file) {
	t.Helper()
	if got := readVolume(t, pod); !maps.Equal(got, want) {
		t.Fatalf("pod %s sees files\n  %v\nwant\n  %v", pod.Name, got, want)
	}
}

// A pod reads every object as a file with its content and mode, on a tmpfs
// of its own; deleting the pod unmounts it and leaves nothing behind.
func TestMountReadAndDelete(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	objects, want := threeObjects()
	createFakeClass(t, ns, "app-secrets", objects, nil)

	start := time.Now()
	pod := waitReady(t, createAppPod(t, ns, "app", "app-secrets"))
	t.Logf("pod Ready with its volume %v after creation", time.Since(start).Round(time.Millisecond))

	assertFiles(t, pod, want)
	var fs struct {
		Type string `json:"type"`
	}
	execJSON(t, ns, pod.Name, "app", &fs, "fstype", mountPath)
	if fs.Type != "tmpfs" {
		t.Fatalf("volume filesystem inside the pod = %+v, want tmpfs", fs)
	}
	// A bind mount does not inherit mount flags, so check the driver's own
	// tmpfs on the node, under the pod's directory.
	var tmpfs []mount
	for _, m := range nodeMounts(t, pod.Spec.NodeName, string(pod.UID)) {
		if m.FSType == "tmpfs" && strings.Contains(m.Path, "/volumes/kubernetes.io~csi/") {
			tmpfs = append(tmpfs, m)
		}
	}
	if len(tmpfs) != 1 {
		t.Fatalf("node mounts of pod %s: %+v; want exactly one tmpfs for the volume", pod.UID, nodeMounts(t, pod.Spec.NodeName, string(pod.UID)))
	}
	for _, opt := range []string{"nosuid", "nodev", "noexec"} {
		if !slices.Contains(strings.Split(tmpfs[0].Options, ","), opt) {
			t.Errorf("volume tmpfs %s has options %q, want %s", tmpfs[0].Path, tmpfs[0].Options, opt)
		}
	}
	// A size cap, so a backend cannot fill the node's memory.
	if !strings.Contains(tmpfs[0].Super, "size=") {
		t.Errorf("volume tmpfs %s has no size cap: %q", tmpfs[0].Path, tmpfs[0].Super)
	}

	// The search for leftovers must be able to see the secret while it is
	// mounted, or its empty result later would prove nothing.
	mounts, files := secretTraces(t, pod.Spec.NodeName, string(pod.UID), values(want)...)
	if len(mounts) == 0 || len(files) != len(want) {
		t.Fatalf("while mounted, the node shows mounts %+v and files %q; want the volume's mount and its %d files", mounts, files, len(want))
	}

	deletePod(t, pod)
	assertNoTraces(t, pod, values(want)...)
}

// Two pods use the same class: each has its own volume, so deleting one
// leaves the other's intact.
func TestTwoPodsShareClass(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	objects, want := threeObjects()
	createFakeClass(t, ns, "shared", objects, nil)
	a := createAppPod(t, ns, "app-a", "shared")
	b := createAppPod(t, ns, "app-b", "shared")
	a, b = waitReady(t, a), waitReady(t, b)
	assertFiles(t, a, want)
	assertFiles(t, b, want)

	deletePod(t, a)
	var mounts []mount
	if err := poll(cleanupTimeout, func() (bool, error) {
		mounts = nodeMounts(t, a.Spec.NodeName, string(a.UID))
		return len(mounts) == 0, nil
	}); err != nil {
		t.Fatalf("volume of deleted pod %s still mounted: %+v", a.Name, mounts)
	}
	assertFiles(t, b, want)

	deletePod(t, b)
	assertNoTraces(t, a, values(want)...)
	assertNoTraces(t, b, values(want)...)
}

// A class is looked up only in the pod's own namespace: a pod in another
// namespace naming it never starts, and its events say what is missing where.
func TestNamespaceIsolation(t *testing.T) {
	t.Parallel()
	nsA, nsB := newNamespace(t), newNamespace(t)
	objects, want := threeObjects()
	createFakeClass(t, nsA, "only-in-a", objects, nil)

	pod := createAppPod(t, nsB, "intruder", "only-in-a")
	msg := waitEvent(t, pod, "FailedMount", "only-in-a", nsB)
	t.Logf("event: %s", msg)
	for _, v := range values(want) {
		if strings.Contains(msg, v) {
			t.Fatalf("event message reveals a secret value of namespace %s: %s", nsA, msg)
		}
	}
	p, err := client.CoreV1().Pods(nsB).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending {
		t.Fatalf("pod naming another namespace's class is %s, want Pending", p.Status.Phase)
	}
	mounts, files := secretTraces(t, p.Spec.NodeName, string(p.UID), values(want)...)
	if len(mounts) != 0 || len(files) != 0 {
		t.Fatalf("pod in %s got mounts %+v, files %q of a class in %s", nsB, mounts, files, nsA)
	}
	deletePod(t, p)
}

// A value changed in the backend reaches the running pod within the rotation
// interval plus kubelet's republish period, with its mode unchanged.
func TestRotation(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	v1 := "v1-" + randHex(8)
	createFakeClass(t, ns, "rotating", []object{{ObjectName: "token", Value: v1, FilePermission: "0440"}}, nil)
	pod := waitReady(t, createAppPod(t, ns, "app", "rotating"))
	assertFiles(t, pod, map[string]file{"token": {Mode: "0440", Content: v1}})

	v2 := "v2-" + randHex(8)
	writeFakeData(t, pod.Spec.NodeName, ns, "token", v2)
	start := time.Now()
	var got map[string]file
	err := poll(rotationTimeout, func() (bool, error) {
		got = readVolume(t, pod)
		return got["token"].Content == v2, nil
	})
	if err != nil {
		t.Fatalf("rotated value not visible after %v; pod sees %v", rotationTimeout, got)
	}
	t.Logf("rotated value visible %v after the backend changed", time.Since(start).Round(time.Second))
	assertFiles(t, pod, map[string]file{"token": {Mode: "0440", Content: v2}})

	deletePod(t, pod)
	// The backend's own copy is not the pod's: remove it before looking for
	// leftovers of the volume.
	removeFakeData(t, pod.Spec.NodeName, ns, "token")
	assertNoTraces(t, pod, v1, v2)
}

// The driver pod is replaced while app pods run: they keep their files, and
// the new driver still unmounts their volumes when they go.
func TestDriverRestart(t *testing.T) {
	ns := newNamespace(t)
	objects, want := threeObjects()
	createFakeClass(t, ns, "survives", objects, nil)
	pod := waitReady(t, createAppPod(t, ns, "app", "survives"))
	assertFiles(t, pod, want)

	old := driverPod(t, pod.Spec.NodeName)
	if err := client.CoreV1().Pods(old.Namespace).Delete(context.Background(), old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting driver pod: %v", err)
	}
	var fresh *corev1.Pod
	if err := poll(podTimeout, func() (bool, error) {
		fresh = driverPod(t, pod.Spec.NodeName)
		return fresh.UID != old.UID, nil
	}); err != nil {
		t.Fatal("the DaemonSet did not replace the deleted driver pod")
	}
	waitRegistered(t, pod.Spec.NodeName)

	assertFiles(t, pod, want)
	deletePod(t, pod)
	assertNoTraces(t, pod, values(want)...)
}

// waitRegistered waits until the node's CSINode lists the driver.
func waitRegistered(t *testing.T, nodeName string) {
	t.Helper()
	if err := poll(podTimeout, func() (bool, error) {
		n, err := client.StorageV1().CSINodes().Get(context.Background(), nodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return slices.ContainsFunc(n.Spec.Drivers, func(d storagev1.CSINodeDriver) bool { return d.Name == driverName }), nil
	}); err != nil {
		t.Fatalf("CSINode %s does not list %s", nodeName, driverName)
	}
}

// A class with a bad parameter: the pod's events carry the precise error and
// nothing is mounted.
func TestBadParameters(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	createFakeClass(t, ns, "bad-mode", []object{{ObjectName: "x", Value: "y", FilePermission: "0999"}}, nil)
	pod := createAppPod(t, ns, "app", "bad-mode")
	msg := waitEvent(t, pod, "FailedMount", "InvalidArgument", "filePermission")
	t.Logf("event: %s", msg)

	p, err := client.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending {
		t.Fatalf("pod with a bad class is %s, want Pending", p.Status.Phase)
	}
	if mounts := nodeMounts(t, p.Spec.NodeName, string(p.UID)); len(mounts) != 0 {
		t.Fatalf("failed publish left mounts %+v", mounts)
	}
	deletePod(t, p)
}

// The driver's permissions are exactly those of deploy/rbac.yaml: it reads
// SecretProviderClasses, posts Events, and cannot read Secrets.
func TestDriverRBAC(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	user := "system:serviceaccount:" + driverNamespace + ":" + driverSA
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + driverNamespace, "system:authenticated"}
	can := func(verb, group, resource, ns string) bool {
		sar, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User: user, Groups: groups,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource, Namespace: ns},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview: %v", err)
		}
		return sar.Status.Allowed
	}
	for _, ns := range []string{"", "default", driverNamespace} {
		for _, verb := range []string{"get", "list", "watch"} {
			if can(verb, "", "secrets", ns) {
				t.Errorf("driver can %s secrets in namespace %q", verb, ns)
			}
			if !can(verb, "secrets-store.csi.x-k8s.io", "secretproviderclasses", ns) {
				t.Errorf("driver cannot %s secretproviderclasses in namespace %q", verb, ns)
			}
		}
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			if can(verb, "secrets-store.csi.x-k8s.io", "secretproviderclasses", ns) {
				t.Errorf("driver can %s secretproviderclasses in namespace %q", verb, ns)
			}
		}
		if can("create", "", "serviceaccounts/token", ns) {
			t.Errorf("driver can mint service-account tokens in namespace %q", ns)
		}
		for _, verb := range []string{"create", "patch"} {
			if !can(verb, "", "events", ns) {
				t.Errorf("driver cannot %s events in namespace %q", verb, ns)
			}
		}
		for _, verb := range []string{"get", "list", "watch", "update", "delete"} {
			if can(verb, "", "events", ns) {
				t.Errorf("driver can %s events in namespace %q", verb, ns)
			}
		}
		for _, verb := range []string{"create", "patch"} {
			if can(verb, "events.k8s.io", "events", ns) {
				t.Errorf("driver can %s events.k8s.io events in namespace %q", verb, ns)
			}
		}
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			if can(verb, "", "secrets", ns) || can(verb, "", "pods", ns) {
				t.Errorf("driver can %s secrets or pods in namespace %q", verb, ns)
			}
		}
	}

	// The ClusterRole in the cluster is the one in the manifests, and the
	// service account is bound to nothing else.
	want := manifestClusterRole(t)
	got, err := client.RbacV1().ClusterRoles().Get(ctx, want.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Rules, want.Rules) {
		t.Errorf("ClusterRole %s rules = %+v, manifests say %+v", want.Name, got.Rules, want.Rules)
	}
	isDriver := func(s rbacv1.Subject) bool {
		return s.Kind == rbacv1.ServiceAccountKind && s.Name == driverSA && s.Namespace == driverNamespace
	}
	crbs, err := client.RbacV1().ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range crbs.Items {
		if slices.ContainsFunc(b.Subjects, isDriver) && b.RoleRef.Name != want.Name {
			t.Errorf("ClusterRoleBinding %s also grants %s to the driver", b.Name, b.RoleRef.Name)
		}
	}
	rbs, err := client.RbacV1().RoleBindings("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rbs.Items {
		for _, s := range b.Subjects {
			if s.Kind == rbacv1.ServiceAccountKind && s.Name == driverSA && (s.Namespace == driverNamespace || s.Namespace == "" && b.Namespace == driverNamespace) {
				t.Errorf("RoleBinding %s/%s grants %s to the driver", b.Namespace, b.Name, b.RoleRef.Name)
			}
		}
	}
}

// manifestClusterRole reads the driver's ClusterRole from deploy/rbac.yaml.
func manifestClusterRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	data, err := os.ReadFile("../../deploy/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		var role rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict([]byte(doc), &role); err == nil && role.Kind == "ClusterRole" {
			return &role
		}
	}
	t.Fatal("deploy/rbac.yaml has no ClusterRole")
	return nil
}
