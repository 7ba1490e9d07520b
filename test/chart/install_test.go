package chart

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/test/kubeapi"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

const crdName = "secretproviderclasses.secrets-store.csi.x-k8s.io"

// cluster is a real kube-apiserver for one test.
type cluster struct {
	*kubeapi.Server
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	s, err := kubeapi.Start()
	s = kubeapi.Require(t, s, err)
	t.Cleanup(s.Stop)
	c := &cluster{Server: s, dyn: dynamic.NewForConfigOrDie(s.Admin)}
	c.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(s.Client.Discovery()))
	return c
}

// apply creates or dry-run-creates (strict field validation) every object
// of a YAML stream.
func (c *cluster) apply(t *testing.T, docs [][]byte, dryRun bool) {
	t.Helper()
	for _, doc := range docs {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatal(err)
		}
		gvk := u.GroupVersionKind()
		m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = c.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		opts := metav1.CreateOptions{FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		if _, err := ri.Create(context.Background(), u, opts); err != nil {
			t.Errorf("the API server rejects %s %s/%s: %v", gvk.Kind, u.GetNamespace(), u.GetName(), err)
		}
	}
}

func (c *cluster) createNamespace(t *testing.T, name string) {
	t.Helper()
	_, err := c.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// createCRD creates a CRD from a file and waits until it is served.
func (c *cluster) createCRD(t *testing.T, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	c.apply(t, [][]byte{data}, false)
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &u.Object); err != nil {
		t.Fatal(err)
	}
	c.waitEstablished(t, u.GetName())
}

func (c *cluster) waitEstablished(t *testing.T, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		crd, err := c.crd(ctx, name)
		if err != nil || crd == nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD %s not established: %v", name, err)
	}
	c.mapper.Reset()
}

// crd returns the live CRD, or nil when there is none.
func (c *cluster) crd(ctx context.Context, name string) (*unstructured.Unstructured, error) {
	u, err := c.dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	return u, err
}

func (c *cluster) mustCRD(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	u, err := c.crd(context.Background(), crdName)
	if err != nil || u == nil {
		t.Fatalf("CRD %s: %v (present: %v)", crdName, err, u != nil)
	}
	return u
}

// Every row of the values matrix is accepted by a real API server (server-side
// dry run, unknown fields are errors), as is the chart's own dry-run install.
func TestServerDryRun(t *testing.T) {
	h := newHelm(t)
	c := startCluster(t)
	c.createNamespace(t, namespace)
	// The ServiceMonitor's own schema is checked by strict decoding into the
	// prometheus-operator types (TestRender); here it needs a served kind.
	c.createCRD(t, "testdata/servicemonitor-crd.yaml")
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			r := parseRendered(t, h.must(cs.templateArgs()...))
			c.apply(t, r.docs, true)
		})
	}
	h.withServer(c.Server)
	out := h.must("install", "secretfs", chartDir, "--namespace", namespace, "--dry-run=server")
	if !strings.Contains(out, "kind: CustomResourceDefinition") {
		t.Errorf("server dry-run install does not render the CRD on a cluster without one:\n%s", out)
	}
}

// A release installs the CRD, upgrades it when the chart's copy changes, and
// leaves it (and the classes) behind on uninstall.
func TestUpgradeChangesCRD(t *testing.T) {
	h := newHelm(t)
	c := startCluster(t)
	h.withServer(c.Server)
	ctx := context.Background()

	// The previous chart version: this chart with an older CRD that lacks
	// the Provider printer column and the provider's length limits.
	prev := copyChart(t, chartDir)
	replaceInFile(t, filepath.Join(prev, "Chart.yaml"), "version: 0.2.0", "version: 0.1.99")
	crdFile := filepath.Join(prev, "files", "secretproviderclasses.yaml")
	replaceInFile(t, crdFile, "        - name: Provider\n          type: string\n          jsonPath: .spec.provider\n", "")
	replaceInFile(t, crdFile, "                  minLength: 1\n                  maxLength: 63\n", "")

	h.must("install", "secretfs", prev, "--namespace", namespace, "--create-namespace")
	before := c.mustCRD(t)
	if printerColumns(before) != "Age,Age" {
		t.Fatalf("installed CRD printer columns %q, want only Age in each version (the old chart's)", printerColumns(before))
	}
	if before.GetAnnotations()["meta.helm.sh/release-name"] != "secretfs" || before.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("installed CRD annotations %v: want it owned by the release and kept", before.GetAnnotations())
	}
	c.waitEstablished(t, crdName)
	class := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
		"metadata": map[string]any{"name": "keep-me", "namespace": "default"},
		"spec":     map[string]any{"provider": "fake"},
	}}
	classes := c.dyn.Resource(schema.GroupVersionResource{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasses"}).Namespace("default")
	if _, err := classes.Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	h.must("upgrade", "secretfs", chartDir, "--namespace", namespace)
	after := c.mustCRD(t)
	if printerColumns(after) != "Provider,Age,Provider,Age" {
		t.Errorf("after helm upgrade the CRD's printer columns are %q, want Provider,Age in each version", printerColumns(after))
	}
	tooLong := class.DeepCopy()
	tooLong.SetName("too-long")
	_ = unstructured.SetNestedField(tooLong.Object, strings.Repeat("p", 64), "spec", "provider")
	if _, err := classes.Create(ctx, tooLong, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("a 64-character provider after the upgrade: %v, want Invalid (the new CRD's maxLength)", err)
	}

	h.must("uninstall", "secretfs", "--namespace", namespace)
	c.mustCRD(t)
	if _, err := classes.Get(ctx, "keep-me", metav1.GetOptions{}); err != nil {
		t.Errorf("class after helm uninstall: %v", err)
	}
	// A new install of the same release takes the kept CRD back.
	h.must("install", "secretfs", chartDir, "--namespace", namespace)
}

// Chart 0.1.0 installed the CRD from crds/, which Helm never upgrades and no
// release owns. Upgrading leaves it alone (and says so) until the admin
// hands it over with crds.adopt and --take-ownership.
func TestUpgradeFromCRDsDirectory(t *testing.T) {
	h := newHelm(t)
	c := startCluster(t)
	h.withServer(c.Server)

	h.must("install", "secretfs", "testdata/secretfs-0.1.0", "--namespace", namespace, "--create-namespace")
	if owner := c.mustCRD(t).GetAnnotations()["meta.helm.sh/release-name"]; owner != "" {
		t.Fatalf("0.1.0 installed a CRD owned by %q; want none (crds/)", owner)
	}
	out := h.must("upgrade", "secretfs", chartDir, "--namespace", namespace)
	if !strings.Contains(out, "no Helm release owns it") {
		t.Errorf("upgrade notes do not say the CRD was left alone:\n%s", out)
	}
	if owner := c.mustCRD(t).GetAnnotations()["meta.helm.sh/release-name"]; owner != "" {
		t.Errorf("CRD taken over by %q without crds.adopt", owner)
	}
	h.must("upgrade", "secretfs", chartDir, "--namespace", namespace, "--set", "crds.adopt=true", "--take-ownership")
	crd := c.mustCRD(t)
	if crd.GetAnnotations()["meta.helm.sh/release-name"] != "secretfs" || crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("after adopting, CRD annotations are %v", crd.GetAnnotations())
	}
	// From now on plain upgrades manage it.
	h.must("upgrade", "secretfs", chartDir, "--namespace", namespace)
}

// Next to the Secrets Store CSI Driver, whose CRD has the same name, the
// chart neither fails nor touches that CRD, and says so.
func TestInstallNextToSSCD(t *testing.T) {
	h := newHelm(t)
	c := startCluster(t)
	h.withServer(c.Server)
	c.createCRD(t, "testdata/sscd-crd.yaml")
	before := c.mustCRD(t)

	for _, args := range [][]string{
		{"install", "secretfs", chartDir, "--namespace", namespace, "--create-namespace", "--dry-run=server"},
		{"install", "secretfs", chartDir, "--namespace", namespace, "--create-namespace"},
		{"upgrade", "secretfs", chartDir, "--namespace", namespace, "--set", "crds.adopt=true"},
	} {
		out := h.must(args...)
		if !strings.Contains(out, "left as it is: the Secrets Store CSI Driver's installer") {
			t.Errorf("helm %s: notes do not say the CRD was left alone:\n%s", args[0], out)
		}
		if strings.Contains(out, "kind: CustomResourceDefinition") {
			t.Errorf("helm %s rendered the CRD next to SSCD's", args[0])
		}
	}
	after := c.mustCRD(t)
	if after.GetResourceVersion() != before.GetResourceVersion() {
		t.Errorf("SSCD's CRD changed: resourceVersion %s -> %s", before.GetResourceVersion(), after.GetResourceVersion())
	}
	h.must("uninstall", "secretfs", "--namespace", namespace)
	c.mustCRD(t)
}

func printerColumns(crd *unstructured.Unstructured) string {
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	var names []string
	for _, v := range versions {
		cols, _, _ := unstructured.NestedSlice(v.(map[string]any), "additionalPrinterColumns")
		for _, c := range cols {
			names = append(names, c.(map[string]any)["name"].(string))
		}
	}
	return strings.Join(names, ",")
}

func copyChart(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "secretfs")
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(filepath.Join(dst, rel))
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		return errors.Join(err, out.Close())
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func replaceInFile(t *testing.T, path, old, new string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(data), old, new)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The Secrets Store CSI Driver installed after secretfs: its upgrade hook
// applies its CRD over ours (controller-gen's annotation, its schema). The
// next helm upgrade leaves that CRD alone instead of applying ours back,
// and does not delete it although it no longer renders it.
func TestSSCDAppliedOverOurs(t *testing.T) {
	h := newHelm(t)
	c := startCluster(t)
	h.withServer(c.Server)
	ctx := context.Background()
	h.must("install", "secretfs", chartDir, "--namespace", namespace, "--create-namespace")

	theirs := &unstructured.Unstructured{}
	data, err := os.ReadFile("testdata/sscd-crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &theirs.Object); err != nil {
		t.Fatal(err)
	}
	live := c.mustCRD(t)
	annotations := live.GetAnnotations()
	annotations["controller-gen.kubebuilder.io/version"] = theirs.GetAnnotations()["controller-gen.kubebuilder.io/version"]
	live.SetAnnotations(annotations)
	versions, _, _ := unstructured.NestedSlice(theirs.Object, "spec", "versions")
	if err := unstructured.SetNestedSlice(live.Object, versions, "spec", "versions"); err != nil {
		t.Fatal(err)
	}
	updated, err := c.dyn.Resource(crdGVR).Update(ctx, live, metav1.UpdateOptions{FieldManager: "kubectl-client-side-apply"})
	if err != nil {
		t.Fatal(err)
	}

	out := h.must("upgrade", "secretfs", chartDir, "--namespace", namespace)
	if !strings.Contains(out, "left as it is: the Secrets Store CSI Driver's installer") {
		t.Errorf("upgrade notes do not say the CRD was left alone:\n%s", out)
	}
	after := c.mustCRD(t)
	if after.GetResourceVersion() != updated.GetResourceVersion() {
		t.Errorf("helm upgrade changed the CRD SSCD applied (resourceVersion %s -> %s)", updated.GetResourceVersion(), after.GetResourceVersion())
	}
}
