package class

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/secretfs/secretfs/provider"
)

const twoClasses = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: app
  namespace: team-a
spec:
  provider: azure
  parameters:
    keyvaultName: kv
    objects: |
      array:
        - |
          objectName: db
  secretObjects:
  - secretName: synced
    type: Opaque
    data:
    - objectName: db
      key: password
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ignored
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: nons
spec:
  provider: fake
`

func TestDirSource(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "classes.yaml")
	if err := os.WriteFile(file, []byte(twoClasses), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not yaml ["), 0o644)
	src := NewDir(dir)
	// The source looks at the directory at most once per RecheckInterval;
	// the test moves its clock instead of sleeping.
	clock := time.Now()
	src.(*dirSource).now = func() time.Time { return clock }
	ctx := context.Background()

	c, err := src.Get(ctx, "team-a", "app")
	if err != nil {
		t.Fatal(err)
	}
	if c.Provider != "azure" || c.Parameters["keyvaultName"] != "kv" || !strings.Contains(c.Parameters["objects"], "objectName: db") {
		t.Fatalf("class %+v", c)
	}
	if len(c.SecretObjects) != 1 || c.SecretObjects[0].SecretName != "synced" || c.SecretObjects[0].Data[0].Key != "password" {
		t.Fatalf("secretObjects %+v", c.SecretObjects)
	}
	if c, err := src.Get(ctx, "default", "nons"); err != nil || c.Provider != "fake" {
		t.Fatalf("class without namespace: %+v %v", c, err)
	}
	// Only the pod's namespace counts.
	_, err = src.Get(ctx, "team-b", "app")
	if provider.CodeOf(err) != codes.NotFound || !strings.Contains(err.Error(), `"app"`) || !strings.Contains(err.Error(), `"team-b"`) {
		t.Fatalf("want NotFound naming class and namespace, got %v", err)
	}

	// An edit is seen on the first lookup after the recheck interval (mtime
	// moves), not before: within the interval nothing is stat'ed.
	edited := strings.Replace(twoClasses, "provider: azure", "provider: kubernetes", 1)
	os.WriteFile(file, []byte(edited), 0o644)
	future := time.Now().Add(time.Minute)
	os.Chtimes(file, future, future)
	clock = clock.Add(RecheckInterval / 2)
	if c, _ := src.Get(ctx, "team-a", "app"); c == nil || c.Provider != "azure" {
		t.Fatalf("directory looked at again within the recheck interval: %+v", c)
	}
	clock = clock.Add(RecheckInterval / 2)
	if c, _ := src.Get(ctx, "team-a", "app"); c == nil || c.Provider != "kubernetes" {
		t.Fatalf("edit not seen: %+v", c)
	}

	// A broken file is named in the NotFound message.
	os.WriteFile(filepath.Join(dir, "broken.yaml"), []byte("kind: [\n"), 0o644)
	clock = clock.Add(RecheckInterval)
	_, err = src.Get(ctx, "team-a", "missing")
	if provider.CodeOf(err) != codes.NotFound || !strings.Contains(err.Error(), "broken.yaml") {
		t.Fatalf("want NotFound naming broken.yaml, got %v", err)
	}

	// A removed file's classes disappear.
	os.Remove(file)
	clock = clock.Add(RecheckInterval)
	if _, err := src.Get(ctx, "team-a", "app"); provider.CodeOf(err) != codes.NotFound {
		t.Fatalf("removed class still found: %v", err)
	}
}

func TestDirSourceClassWithoutProvider(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "c.yml"), []byte("apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {name: x, namespace: ns1}\nspec: {}\n"), 0o644)
	_, err := NewDir(dir).Get(context.Background(), "ns1", "x")
	if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spec.provider") {
		t.Fatalf("got %v", err)
	}
}

func TestDirSourceMissingDir(t *testing.T) {
	_, err := NewDir(filepath.Join(t.TempDir(), "nope")).Get(context.Background(), "ns1", "x")
	if provider.CodeOf(err) != codes.NotFound {
		t.Fatalf("got %v", err)
	}
}

func spc(ns, name, prov string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": Group + "/" + Version,
		"kind":       Kind,
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       map[string]any{"provider": prov, "parameters": map[string]any{"k": "v"}},
	}}
}

// The informer path and the GET fallback, against client-go's fake dynamic
// client (the real API server is exercised by the end-to-end tests).
func TestAPISource(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	scheme := runtime.NewScheme()
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schemaGVR]string{GVR: Kind + "List"}, spc("team-a", "app", "fake"))
	src := newAPISource(ctx, client)

	c, err := src.Get(ctx, "team-a", "app")
	if err != nil || c.Provider != "fake" || c.Parameters["k"] != "v" || c.Namespace != "team-a" {
		t.Fatalf("got %+v, %v", c, err)
	}
	gets := countGets(client)
	if gets != 0 {
		t.Fatalf("cached lookup made %d GETs", gets)
	}
	_, err = src.Get(ctx, "team-b", "app")
	if provider.CodeOf(err) != codes.NotFound || !strings.Contains(err.Error(), `"team-b"`) {
		t.Fatalf("want NotFound, got %v", err)
	}
	if countGets(client) != 1 {
		t.Fatalf("miss should fall back to one GET, made %d", countGets(client))
	}
}

type schemaGVR = schema.GroupVersionResource

func countGets(c *dynamicfake.FakeDynamicClient) int {
	n := 0
	for _, a := range c.Actions() {
		if a.GetVerb() == "get" {
			n++
		}
	}
	return n
}

func FuzzParseDocuments(f *testing.F) {
	f.Add(twoClasses)
	f.Add("kind: [\n")
	f.Add("---\n---\n")
	f.Add("apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {}\n")
	f.Fuzz(func(t *testing.T, in string) {
		classes, err := parseDocuments([]byte(in))
		if err != nil {
			return
		}
		for _, c := range classes {
			if c.Name == "" || c.Namespace == "" {
				t.Fatalf("class without name or namespace: %+v", c)
			}
		}
	})
}

// A class written as v1alpha1 (the Secrets Store CSI Driver still serves it)
// is a class; spec fields the driver does not act on are named, not dropped.
func TestDeprecatedVersionAndUnknownFields(t *testing.T) {
	classes, err := parseDocuments([]byte(`apiVersion: secrets-store.csi.x-k8s.io/v1alpha1
kind: SecretProviderClass
metadata:
  name: old
  namespace: ns
spec:
  provider: fake
  rotationPollInterval: 2m
  extra: {a: b}
`))
	if err != nil || len(classes) != 1 {
		t.Fatalf("got %d classes, %v", len(classes), err)
	}
	if got := strings.Join(classes[0].Unknown, ","); got != "extra,rotationPollInterval" {
		t.Errorf("Unknown = %q", got)
	}
	classes, _ = parseDocuments([]byte(twoClasses))
	if len(classes[0].Unknown) != 0 {
		t.Errorf("known fields reported as unknown: %v", classes[0].Unknown)
	}
}

func TestNotFoundKeepsSSCDWording(t *testing.T) {
	err := notFound("team-a", "app", "")
	if !strings.HasPrefix(err.Error(), "failed to get secretproviderclass team-a/app: ") {
		t.Errorf("message %q", err.Error())
	}
}

// A change of the refresh annotation to a new non-empty value is one
// request; another change of the class, the same value again, or removing
// it is none.
func TestAPISourceRefreshRequested(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schemaGVR]string{GVR: Kind + "List"}, spc("team-a", "app", "fake"))
	src := newAPISource(ctx, client)
	got := make(chan string, 10)
	if err := src.OnRefreshRequested(func(ns, name string) { got <- ns + "/" + name }); err != nil {
		t.Fatal(err)
	}
	res := client.Resource(GVR).Namespace("team-a")
	update := func(annotation string, param string) {
		t.Helper()
		u, err := res.Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if annotation == "-" {
			u.SetAnnotations(nil)
		} else if annotation != "" {
			u.SetAnnotations(map[string]string{RefreshAnnotation: annotation})
		}
		_ = unstructured.SetNestedField(u.Object, param, "spec", "parameters", "k")
		if _, err := res.Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(want string) {
		t.Helper()
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("refresh requested for %s, want %s", g, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no refresh requested, want %s", want)
		}
	}
	update("2026-12-05T10:00:00Z", "v")
	expect("team-a/app")
	update("", "v2")                     // another change, same annotation
	update("2026-12-05T10:00:00Z", "v3") // same value again
	update("-", "v4")                    // removed
	update("2026-12-05T10:05:00Z", "v5")
	expect("team-a/app") // the only other request: the new value
	select {
	case g := <-got:
		t.Fatalf("unexpected refresh request for %s", g)
	case <-time.After(200 * time.Millisecond):
	}
}
