package manifests

import (
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// The restart-on-change component grants exactly what restarts need to the
// driver's service account: get on pods and replicasets, get and patch on
// deployments, statefulsets and daemonsets, create on pods/eviction; no
// list, watch, update or delete. It installs its admission policy and turns
// the restarts on.
func TestRestartOnChangeComponent(t *testing.T) {
	d := docs(t, "components/restart-on-change/rbac.yaml")
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
	got := map[string]string{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				got[g+"/"+res] += strings.Join(r.Verbs, ",")
			}
		}
	}
	want := map[string]string{"/pods": "get", "apps/replicasets": "get", "apps/deployments": "get,patch",
		"apps/statefulsets": "get,patch", "apps/daemonsets": "get,patch", "/pods/eviction": "create"}
	if len(got) != len(want) {
		t.Errorf("rules %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: verbs %q, want %q", k, got[k], v)
		}
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != "secretfs-node" || binding.Subjects[0].Namespace != "secretfs-system" {
		t.Errorf("binding %+v", binding)
	}
	k := docs(t, "components/restart-on-change/kustomization.yaml")
	if !strings.Contains(string(k[0]), "value: --restart-on-change") || !strings.Contains(string(k[0]), "- rbac.yaml") ||
		!strings.Contains(string(k[0]), "- policy.yaml") {
		t.Error("the component must add --restart-on-change, its RBAC and its admission policy")
	}
}
