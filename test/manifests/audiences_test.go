package manifests

import (
	"slices"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/yaml"
)

// The Azure workload identity component adds exactly Azure's audience to the
// base CSIDriver's, by a JSON patch applied here as kustomize applies it.
func TestAzureWorkloadIdentityComponent(t *testing.T) {
	var k struct {
		APIVersion, Kind string
		Patches          []struct {
			Target struct{ Kind, Name string }
			Patch  string
		}
	}
	decode(t, "components/azure-workload-identity/kustomization.yaml", &k)
	if k.Kind != "Component" || len(k.Patches) != 1 || k.Patches[0].Target.Kind != "CSIDriver" || k.Patches[0].Target.Name != "csi.secretfs.dev" {
		t.Fatalf("component %+v, want one patch of CSIDriver csi.secretfs.dev", k)
	}
	ops, err := yaml.YAMLToJSON([]byte(k.Patches[0].Patch))
	if err != nil {
		t.Fatal(err)
	}
	patch, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	base, err := yaml.YAMLToJSON(docs(t, "csidriver.yaml")[0])
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(base)
	if err != nil {
		t.Fatal(err)
	}
	var d storagev1.CSIDriver
	if err := yaml.UnmarshalStrict(patched, &d); err != nil {
		t.Fatal(err)
	}
	var audiences []string
	for _, r := range d.Spec.TokenRequests {
		audiences = append(audiences, r.Audience)
	}
	if !slices.Equal(audiences, []string{"", "api://AzureADTokenExchange"}) {
		t.Errorf("token audiences with the component %q", audiences)
	}
}
