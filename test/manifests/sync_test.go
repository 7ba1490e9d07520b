package manifests

import (
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// The sync-secrets component grants exactly create/patch on secrets to the
// driver's service account, nothing to get, list, watch or delete, installs
// its admission policy, and turns the sync on.
func TestSyncSecretsComponent(t *testing.T) {
	d := docs(t, "components/sync-secrets/rbac.yaml")
	if len(d) != 2 {
		t.Fatalf("%d documents", len(d))
	}
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	if err := yaml.UnmarshalStrict(d[0], &role); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(d[1], &binding); err != nil {
		t.Fatal(err)
	}
	// Secrets: create and patch only (never get or list); pods: get only, to
	// read a pod's controller, the synced Secret's owner (--sync-owner=controller).
	if len(role.Rules) != 2 || !slices.Equal(role.Rules[0].Resources, []string{"secrets"}) ||
		!slices.Equal(role.Rules[0].Verbs, []string{"create", "patch"}) || !slices.Equal(role.Rules[0].APIGroups, []string{""}) ||
		!slices.Equal(role.Rules[1].Resources, []string{"pods"}) || !slices.Equal(role.Rules[1].Verbs, []string{"get"}) ||
		!slices.Equal(role.Rules[1].APIGroups, []string{""}) {
		t.Errorf("rules %+v", role.Rules)
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != "secretfs-node" || binding.Subjects[0].Namespace != "secretfs-system" {
		t.Errorf("binding %+v", binding)
	}
	k := docs(t, "components/sync-secrets/kustomization.yaml")
	if !strings.Contains(string(k[0]), "value: --sync-secrets") || !strings.Contains(string(k[0]), "rbac.yaml") ||
		!strings.Contains(string(k[0]), "- policy.yaml") {
		t.Error("the component must add --sync-secrets, its RBAC and its admission policy")
	}
}

// The CRD serves v1 (stored) and v1alpha1 (deprecated) with the same schema,
// as the Secrets Store CSI Driver does.
func TestCRDServesV1alpha1(t *testing.T) {
	var crd struct {
		Spec struct {
			Versions []struct {
				Name            string
				Served, Storage bool
				Deprecated      bool
				Schema          any
			}
		}
	}
	if err := yaml.Unmarshal(docs(t, "crd.yaml")[0], &crd); err != nil {
		t.Fatal(err)
	}
	v := crd.Spec.Versions
	if len(v) != 2 || v[0].Name != "v1" || !v[0].Served || !v[0].Storage || v[1].Name != "v1alpha1" || !v[1].Served || v[1].Storage || !v[1].Deprecated {
		t.Fatalf("versions %+v", v)
	}
	a, _ := yaml.Marshal(v[0].Schema)
	b, _ := yaml.Marshal(v[1].Schema)
	if string(a) != string(b) {
		t.Error("v1 and v1alpha1 schemas differ")
	}
}
