package podstatus_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/podstatus"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// apply creates every document of a deploy file with the admin client.
func apply(t *testing.T, dyn dynamic.Interface, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		gvk := u.GroupVersionKind()
		plural := strings.ToLower(gvk.Kind) + "s"
		if gvk.Kind == "CustomResourceDefinition" {
			plural = "customresourcedefinitions"
		} else if strings.HasSuffix(gvk.Kind, "Binding") || strings.HasSuffix(gvk.Kind, "Role") {
			plural = strings.ToLower(gvk.Kind) + "s"
		}
		gvr := schema.GroupVersionResource{Group: gvk.Group, Version: gvk.Version, Resource: plural}
		if _, err := dyn.Resource(gvr).Create(context.Background(), &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s %s: %v", gvk.Kind, u.GetName(), err)
		}
	}
}

func TestPodStatusLifecycle(t *testing.T) {
	srv, err := kubeapi.Start()
	srv = kubeapi.Require(t, srv, err)
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin, err := dynamic.NewForConfig(srv.Admin)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, admin, "../../../deploy/components/pod-status/crd.yaml")
	apply(t, admin, "../../../deploy/components/pod-status/rbac.yaml")
	eventually(t, "the CRD served", func() bool {
		_, err := admin.Resource(podstatus.GVR).Namespace("default").List(context.Background(), metav1.ListOptions{})
		return err == nil
	})
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The driver's service account with only the component's RBAC.
	cfg := rest.CopyConfig(srv.Admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:secretfs-system:secretfs-node"}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w, err := podstatus.New(podstatus.Options{Client: client, Node: "node-a", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	v := hook.Volume{ID: "vol-1", Target: "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/secrets/mount",
		Pod: provider.Pod{Namespace: "team-a", Name: "web-0", UID: "uid-1"}, Class: &class.Class{Name: "app"}}
	// Three changes before the writer runs: one apply, with the last.
	for _, version := range []string{"1", "2", "3"} {
		v.Versions = []provider.ObjectVersion{{ID: "secret/db", Version: version}}
		w.Changed(ctx, v)
	}
	go w.Run(ctx)
	name := podstatus.Name("web-0", "team-a", "app")
	if !strings.HasPrefix(name, "web-0-team-a-app-") {
		t.Fatalf("name %q", name)
	}
	var obj *unstructured.Unstructured
	eventually(t, "the object written", func() bool {
		obj, err = admin.Resource(podstatus.GVR).Namespace("team-a").Get(ctx, name, metav1.GetOptions{})
		return err == nil
	})
	st := obj.Object["status"].(map[string]any)
	objects := st["objects"].([]any)
	if st["podName"] != "web-0" || st["secretProviderClassName"] != "app" || st["mounted"] != true || st["targetPath"] != v.Target ||
		len(objects) != 1 || objects[0].(map[string]any)["version"] != "3" {
		t.Errorf("status %v", st)
	}
	if obj.GetLabels()[podstatus.NodeLabel] != "node-a" || len(obj.GetOwnerReferences()) != 1 || obj.GetOwnerReferences()[0].UID != "uid-1" {
		t.Errorf("labels %v owners %v", obj.GetLabels(), obj.GetOwnerReferences())
	}
	if n := count(t, reg, "apply"); n != 1 {
		t.Errorf("%d applies for three changes queued together, want 1", n)
	}
	// v1alpha1 serves it too.
	alpha := podstatus.GVR
	alpha.Version = "v1alpha1"
	if _, err := admin.Resource(alpha).Namespace("team-a").Get(ctx, name, metav1.GetOptions{}); err != nil {
		t.Errorf("v1alpha1: %v", err)
	}
	w.Gone(v)
	eventually(t, "the object deleted on unpublish", func() bool {
		_, err := admin.Resource(podstatus.GVR).Namespace("team-a").Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

// Names and deletes on a real API server: two volumes SSCD's naming gave
// one object get two; a pod that moved to another node keeps its object
// when the old node's unpublish comes late.
func TestPodStatusNamesAndLateDeletes(t *testing.T) {
	srv, err := kubeapi.Start()
	srv = kubeapi.Require(t, srv, err)
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin, err := dynamic.NewForConfig(srv.Admin)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, admin, "../../../deploy/components/pod-status/crd.yaml")
	apply(t, admin, "../../../deploy/components/pod-status/rbac.yaml")
	eventually(t, "the CRD served", func() bool {
		_, err := admin.Resource(podstatus.GVR).Namespace("default").List(context.Background(), metav1.ListOptions{})
		return err == nil
	})
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(srv.Admin)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:secretfs-system:secretfs-node"}
	client, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	writer := func(node string) *podstatus.Writer {
		w, err := podstatus.New(podstatus.Options{Client: client, Node: node, QPS: 100})
		if err != nil {
			t.Fatal(err)
		}
		go w.Run(ctx)
		return w
	}
	oldNode, newNode := writer("node-old"), writer("node-new")
	vol := func(pod, uid, cls string) hook.Volume {
		return hook.Volume{ID: "vol-" + uid, Target: "/t/" + uid, Pod: provider.Pod{Namespace: "x", Name: pod, UID: uid}, Class: &class.Class{Name: cls}}
	}
	get := func(name string) *unstructured.Unstructured {
		obj, err := admin.Resource(podstatus.GVR).Namespace("x").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return obj
	}
	// SSCD named both "a-x-b-x-c".
	one, two := vol("a-x-b", "uid-1", "c"), vol("a", "uid-2", "b-x-c")
	oldNode.Changed(ctx, one)
	oldNode.Changed(ctx, two)
	n1, n2 := podstatus.Name("a-x-b", "x", "c"), podstatus.Name("a", "x", "b-x-c")
	eventually(t, "two objects", func() bool { return get(n1) != nil && get(n2) != nil })
	if get(n1).Object["status"].(map[string]any)["podName"] != "a-x-b" || get(n2).Object["status"].(map[string]any)["podName"] != "a" {
		t.Fatal("objects mixed up")
	}

	// web-0 moves: the new pod of the same name on another node, then the
	// old node's unpublish.
	name := podstatus.Name("web-0", "x", "app")
	oldNode.Changed(ctx, vol("web-0", "uid-old", "app"))
	eventually(t, "the old pod's object", func() bool {
		o := get(name)
		return o != nil && o.GetOwnerReferences()[0].UID == "uid-old"
	})
	newNode.Changed(ctx, vol("web-0", "uid-new", "app"))
	eventually(t, "the new pod's object", func() bool {
		o := get(name)
		return o != nil && len(o.GetOwnerReferences()) == 1 && o.GetOwnerReferences()[0].UID == "uid-new"
	})
	oldNode.Gone(vol("web-0", "uid-old", "app"))
	oldNode.Gone(one) // a delete that is due: proves the queue got past the late one
	eventually(t, "the old node's queue done", func() bool { return get(n1) == nil })
	if o := get(name); o == nil || o.GetOwnerReferences()[0].UID != "uid-new" {
		t.Fatalf("the old node's late unpublish deleted the new pod's object: %v", o)
	}
	newNode.Gone(vol("web-0", "uid-new", "app"))
	eventually(t, "the new node's unpublish deletes it", func() bool { return get(name) == nil })
}

func count(t *testing.T, reg *prometheus.Registry, operation string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			match := false
			for _, l := range m.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == operation {
					match = true
				}
			}
			if match {
				n += int(m.GetCounter().GetValue())
			}
		}
	}
	return n
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not in time: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
