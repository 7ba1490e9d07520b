package class

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
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
	k := newKeeper(maxKeptTotal)
	got, _ := k.slim(u)
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
	again, _ := k.slim(s)
	if a, b := again.(*unstructured.Unstructured).GetAnnotations(), s.GetAnnotations(); a[RefreshAnnotation] != b[RefreshAnnotation] {
		t.Errorf("slimming twice changed the annotation: %q, %q", a, b)
	}

	_ = unstructured.SetNestedField(u.Object, strings.Repeat("b", maxKeptSpec), "spec", "parameters", "k")
	got, _ = k.slim(u)
	if s := got.(*unstructured.Unstructured); !specNotKept(s) || s.Object["spec"] != nil {
		t.Errorf("a spec over %d bytes kept: %d bytes", maxKeptSpec, sizeOf(s.Object["spec"], 1<<30))
	}
	if again, _ := k.slim(got); !specNotKept(again.(runtime.Object)) {
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

// All kept specs together stay within the keeper's limit: past it a class
// is stored without its spec; a delete frees its charge, and the late
// delete of a class created again under its name (another uid) frees
// nothing of the new one.
func TestKeeperBoundsAllSpecs(t *testing.T) {
	k := newKeeper(3 * 1000)
	class := func(name, uid string) *unstructured.Unstructured {
		u := spc("team-a", name, "fake")
		u.SetUID(types.UID(uid))
		_ = unstructured.SetNestedField(u.Object, strings.Repeat("p", 900), "spec", "parameters", "k")
		return u
	}
	var kept []string
	for i := range 5 {
		name := fmt.Sprint("c", i)
		got, _ := k.slim(class(name, name))
		if !specNotKept(got.(runtime.Object)) {
			kept = append(kept, name)
		}
	}
	if len(kept) != 3 || k.kept() > 3000 {
		t.Fatalf("kept %v (%d bytes), want 3 classes within 3000 bytes", kept, k.kept())
	}
	before := k.kept()
	k.forget("team-a/c0", "c0")
	if k.kept() >= before {
		t.Fatalf("deleting c0 freed nothing: %d -> %d", before, k.kept())
	}
	if got, _ := k.slim(class("c4", "c4")); specNotKept(got.(runtime.Object)) {
		t.Fatal("the space c0 freed was not used")
	}
	// c1 deleted and created again: the new one is charged, then the old
	// one's delete arrives.
	k.forget("team-a/c1", "c1")
	if got, _ := k.slim(class("c1", "c1-new")); specNotKept(got.(runtime.Object)) {
		t.Fatal("the recreated class was not kept")
	}
	charged := k.kept()
	k.forget("team-a/c1", "c1")
	if k.kept() != charged {
		t.Fatalf("a late delete of the old uid freed the new class's charge: %d -> %d", charged, k.kept())
	}
	// Every class gone: nothing charged.
	for _, name := range []string{"c1", "c2", "c4"} {
		uid := name
		if name == "c1" {
			uid = "c1-new"
		}
		k.forget("team-a/"+name, types.UID(uid))
	}
	if k.kept() != 0 {
		t.Fatalf("%d bytes charged with no class", k.kept())
	}
}

// Through the informer: classes whose specs together exceed the limit are
// all served (those beyond it with a GET each), and a delete frees space.
func TestAPISourceManyClassesWithinKeptTotal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var objs []runtime.Object
	const n = 300 // 300 x ~15 KiB > maxKeptTotal
	for i := range n {
		u := spc("team-a", fmt.Sprint("c", i), "fake")
		u.SetUID(types.UID(fmt.Sprint("uid", i)))
		_ = unstructured.SetNestedField(u.Object, strings.Repeat("p", 15<<10), "spec", "parameters", "k")
		objs = append(objs, u)
	}
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schemaGVR]string{GVR: Kind + "List"}, objs...)
	src := newAPISource(ctx, client)
	if got := src.kept.kept(); got > maxKeptTotal || got < maxKeptTotal-maxKeptSpec-64 {
		t.Fatalf("kept %d bytes of specs, want just under %d", got, maxKeptTotal)
	}
	for i := range n {
		c, err := src.Get(ctx, "team-a", fmt.Sprint("c", i))
		if err != nil || len(c.Parameters["k"]) != 15<<10 {
			t.Fatalf("Get c%d: %v", i, err)
		}
	}
	if gets := countGets(client); gets == 0 || gets >= n {
		t.Fatalf("%d GETs for %d classes: want the ones beyond the limit only", gets, n)
	}
	before := src.kept.kept()
	var victim string
	src.kept.mu.Lock()
	for key := range src.kept.sizes {
		victim = strings.TrimPrefix(key, "team-a/")
		break
	}
	src.kept.mu.Unlock()
	if err := client.Resource(GVR).Namespace("team-a").Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for src.kept.kept() >= before {
		if time.Now().After(deadline) {
			t.Fatalf("deleting a kept class freed nothing (%d bytes)", before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
