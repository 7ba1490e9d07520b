package class

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynamicfake "k8s.io/client-go/dynamic/fake"
)

// The informer keeps a class's name, its refresh annotation (a digest when
// long) and a small spec; nothing else a tenant writes. Slimming twice is
// slimming once.
func TestSlimKeepsWhatTheDriverActsOn(t *testing.T) {
	u := spc("team-a", "app", "fake")
	u.SetLabels(map[string]string{"l": strings.Repeat("x", 1000)})
	u.SetAnnotations(map[string]string{RefreshAnnotation: strings.Repeat("a", 200<<10), "other": strings.Repeat("y", 1000)})
	u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: strings.Repeat("m", 1000)}})
	u.SetResourceVersion("7")
	u.Object["status"] = map[string]any{"s": strings.Repeat("z", 1000)}
	got, _ := slim(u)
	s := got.(*unstructured.Unstructured)
	if s.GetName() != "app" || s.GetNamespace() != "team-a" || s.GetResourceVersion() != "7" || len(s.GetLabels()) != 0 ||
		len(s.GetManagedFields()) != 0 || s.Object["status"] != nil || specNotKept(s) {
		t.Errorf("slimmed: %v", s.Object)
	}
	if a := s.GetAnnotations(); len(a) != 1 || !strings.HasPrefix(a[RefreshAnnotation], "sha256:") || len(a[RefreshAnnotation]) > maxKeptAnnotation {
		t.Errorf("annotations %v", a)
	}
	if p, _, _ := unstructured.NestedString(s.Object, "spec", "parameters", "k"); p != "v" {
		t.Errorf("spec not kept: %v", s.Object)
	}
	again, _ := slim(s)
	if a, b := again.(*unstructured.Unstructured).GetAnnotations(), s.GetAnnotations(); a[RefreshAnnotation] != b[RefreshAnnotation] {
		t.Errorf("slimming twice changed the annotation: %q, %q", a, b)
	}

	_ = unstructured.SetNestedField(u.Object, strings.Repeat("b", maxKeptSpec), "spec", "parameters", "k")
	got, _ = slim(u)
	if s := got.(*unstructured.Unstructured); !specNotKept(s) || s.Object["spec"] != nil {
		t.Errorf("a spec over %d bytes kept: %d bytes", maxKeptSpec, sizeOf(s.Object["spec"], 1<<30))
	}
	if again, _ := slim(got); !specNotKept(again.(runtime.Object)) {
		t.Error("slimming a class without its spec again lost the mark")
	}
}

// A class whose spec the informer does not keep is read with one GET per
// Get; a change of a long refresh annotation to another long value is one
// request, the same long value again none.
func TestAPISourceLargeClass(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	big := spc("team-a", "big", "fake")
	_ = unstructured.SetNestedField(big.Object, strings.Repeat("b", maxKeptSpec), "spec", "parameters", "k")
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schemaGVR]string{GVR: Kind + "List"}, big)
	src := newAPISource(ctx, client)
	got := make(chan string, 10)
	if err := src.OnRefreshRequested(func(ns, name string) { got <- ns + "/" + name }); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		c, err := src.Get(ctx, "team-a", "big")
		if err != nil || len(c.Parameters["k"]) != maxKeptSpec {
			t.Fatalf("Get: %v", err)
		}
		if n := countGets(client); n != i {
			t.Fatalf("%d Gets made %d GETs", i, n)
		}
	}
	res := client.Resource(GVR).Namespace("team-a")
	annotate := func(v string) {
		t.Helper()
		u, err := res.Get(ctx, "big", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		u.SetAnnotations(map[string]string{RefreshAnnotation: v})
		if _, err := res.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	long := strings.Repeat("a", 100<<10)
	for _, v := range []string{long + "1", long + "2", long + "2"} {
		annotate(v)
	}
	for range 2 {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("a change of a long annotation was no request")
		}
	}
	select {
	case g := <-got:
		t.Fatalf("the same long value again requested a refresh of %s", g)
	case <-time.After(200 * time.Millisecond):
	}
}
