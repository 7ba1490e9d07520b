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
	"github.com/secretfs/secretfs/driver/podstatus"
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
	apply(t, admin, "../../deploy/components/pod-status/crd.yaml")
	apply(t, admin, "../../deploy/components/pod-status/rbac.yaml")
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
	if name != "web-0-team-a-app" {
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
