package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	spc "github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// A tenant who may create classes in its own namespace writes many of them,
// each near the API server's size limit (a 200 KiB annotation, the most
// annotations may hold, and a 1 MiB parameter): every node's driver watches
// every class, and holds in memory only what it acts on (the refresh
// annotation as a digest, and the spec of a class small enough to keep), so it
// stays under the shipped memory limit and still serves a publish of a small
// class and of a large one, and a refresh requested through the annotation.
func TestManyLargeClassesInShippedMemoryLimit(t *testing.T) {
	ctx, api, dyn := tenantAPI(t)
	classes := dyn.Resource(spc.GVR).Namespace("team-a")
	// Half before the driver starts (its first list), half while it runs
	// (its watch): 120 classes of 1.2 MiB each.
	const n = 120
	large := func(name string) *unstructured.Unstructured {
		u := spcObject(name, "      - {objectName: x, value: v}\n")
		u.SetAnnotations(map[string]string{spc.RefreshAnnotation: strings.Repeat("a", 200<<10)})
		_ = unstructured.SetNestedField(u.Object, strings.Repeat("b", 1<<20), "spec", "parameters", "padding")
		return u
	}
	create := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			u := large(fmt.Sprintf("big-%d", i))
			if i == n-1 { // published below: a spec over what the informer keeps, that the fake backend accepts
				u = spcObject(u.GetName(), "      # "+strings.Repeat("c", 20<<10)+"\n      - {objectName: x, value: v}\n")
				u.SetAnnotations(map[string]string{spc.RefreshAnnotation: strings.Repeat("a", 200<<10)})
			}
			if _, err := classes.Create(ctx, u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("class %d: %v", i, err)
			}
		}
	}
	create(0, n/2)
	if _, err := classes.Create(ctx, spcObject("small", "      - {objectName: x, value: v}\n"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	limit := shippedMemoryLimit(t)
	cg := newMemcg(t, limit)
	dir := t.TempDir()
	t.Cleanup(func() { unmountAllUnder(dir) })
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeKubeconfig(t, kubeconfig, api)
	csiSock := filepath.Join(dir, "csi.sock")
	drv := cg.startIn(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--kubeconfig", kubeconfig,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "",
		"--backends", "fake", "--events=false", "--min-rotation-interval", "1s")
	node := nodeClient(t, csiSock)
	create(n/2, n)

	// The driver sees the last class it was sent.
	last := fmt.Sprintf("big-%d", n-1)
	for _, name := range []string{"small", last} {
		var err error
		for range 100 {
			if _, err = node.NodePublishVolume(ctx, publishRequest(name, filepath.Join(dir, name))); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
			if cg.oomKills(t) != 0 {
				break
			}
		}
		if k := cg.oomKills(t); k != 0 {
			t.Fatalf("the driver was OOM-killed (%d) with %d classes of 1.2 MiB", k, n)
		}
		if err != nil {
			t.Fatalf("publish of class %s: %v", name, err)
		}
		if got := readTree(t, filepath.Join(dir, name))["x"]; !strings.HasSuffix(got, " v") {
			t.Errorf("class %s: file x is %q", name, got)
		}
	}
	// A refresh requested with another long annotation value reaches the
	// volume of the class the informer keeps no spec of.
	u, err := classes.Get(ctx, last, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u.SetAnnotations(map[string]string{spc.RefreshAnnotation: strings.Repeat("b", 200<<10)})
	if _, err := classes.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	requested := func() string {
		out, err := exec.Command(secretfsBin, "status", "-o", "json", "--socket", filepath.Join(dir, "status.sock")).Output()
		if err != nil {
			t.Fatalf("secretfs status: %v", err)
		}
		var vols []struct{ VolumeID, RequestedBy string }
		if err := json.Unmarshal(out, &vols); err != nil {
			t.Fatal(err)
		}
		for _, v := range vols {
			if v.VolumeID == "vol-"+last {
				return v.RequestedBy
			}
		}
		return ""
	}
	for i := 0; requested() != "class annotation"; i++ {
		if i == 100 {
			t.Fatalf("no refresh of class %s requested by its annotation", last)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !alive(drv) {
		t.Fatalf("the driver died (OOM kills %d)", cg.oomKills(t))
	}
	if k := cg.oomKills(t); k != 0 {
		t.Fatalf("%d OOM kills", k)
	}
	peak := cg.peak(t)
	t.Logf("cgroup peak %d MiB of %d MiB with %d classes of 1.2 MiB", peak>>20, limit>>20, n)
	if peak >= limit {
		t.Fatalf("cgroup peak %d reached the limit %d", peak, limit)
	}
}

// spcObject is a fake-backend class in team-a.
func spcObject(name, objects string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": spc.Group + "/" + spc.Version,
		"kind":       spc.Kind,
		"spec": map[string]any{
			"provider":   "fake",
			"parameters": map[string]any{"objects": objects},
		},
	}}
	u.SetName(name)
	u.SetNamespace("team-a")
	return u
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRD creates deploy/crd.yaml and waits until it is served.
// tenantAPI starts an API server with the SecretProviderClass CRD and the
// tenant's namespace team-a, and returns a context for the test's four
// minutes and an admin dynamic client.
func tenantAPI(t *testing.T) (context.Context, *kubeapi.Server, dynamic.Interface) {
	t.Helper()
	s, err := kubeapi.Start()
	api := kubeapi.Require(t, s, err)
	t.Cleanup(api.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	dyn, err := dynamic.NewForConfig(api.Admin)
	if err != nil {
		t.Fatal(err)
	}
	installCRD(ctx, t, dyn)
	if _, err := api.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return ctx, api, dyn
}

func installCRD(ctx context.Context, t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	data, err := os.ReadFile("../../deploy/crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if _, err = dyn.Resource(spc.GVR).Namespace("default").List(ctx, metav1.ListOptions{}); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the class CRD is not served: %v", err)
}

// writeKubeconfig writes an admin kubeconfig for api.
func writeKubeconfig(t *testing.T, path string, api *kubeapi.Server) {
	t.Helper()
	cfg := map[string]any{
		"apiVersion": "v1", "kind": "Config", "current-context": "c",
		"clusters": []any{map[string]any{"name": "c", "cluster": map[string]any{"server": api.Host, "certificate-authority-data": api.CAData}}},
		"users":    []any{map[string]any{"name": "u", "user": map[string]any{"token": api.Admin.BearerToken}}},
		"contexts": []any{map[string]any{"name": "c", "context": map[string]any{"cluster": "c", "user": "u"}}},
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
