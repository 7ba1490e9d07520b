//go:build e2e

package e2e

import (
	"context"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// componentArgs is the driver argument each opt-in component of
// deploy/components turns on.
var componentArgs = map[string]string{
	"sync-secrets":      "--sync-secrets",
	"restart-on-change": "--restart-on-change",
}

// withComponents turns the named opt-in components on for the rest of the
// test, as shipped: each one's RBAC (rbac.yaml) and admission policy
// (policy.yaml) bound to the driver's service account in the namespace the
// driver runs in, and its driver argument, all arguments in one roll of the
// DaemonSet. Cleanup rolls them off again (one roll) and deletes the rest.
func withComponents(t *testing.T, components ...string) {
	t.Helper()
	ctx := context.Background()
	args := map[string]bool{}
	for _, c := range components {
		arg, ok := componentArgs[c]
		if !ok {
			t.Fatalf("no driver argument known for component %q", c)
		}
		args[arg] = true
		// read decodes the documents of one of the component's files, in
		// order, into into.
		read := func(file string, into ...any) {
			data, err := os.ReadFile("../../deploy/components/" + c + "/" + file)
			if err != nil {
				t.Fatal(err)
			}
			docs := strings.Split(strings.ReplaceAll(string(data), "system:serviceaccount:secretfs-system:secretfs-node",
				"system:serviceaccount:"+driverNamespace+":secretfs-node"), "\n---\n")
			if len(docs) != len(into) {
				t.Fatalf("deploy/components/%s/%s has %d documents, want %d", c, file, len(docs), len(into))
			}
			for i, v := range into {
				if err := yaml.UnmarshalStrict([]byte(docs[i]), v); err != nil {
					t.Fatalf("deploy/components/%s/%s document %d: %v", c, file, i+1, err)
				}
			}
		}
		var role rbacv1.ClusterRole
		var binding rbacv1.ClusterRoleBinding
		read("rbac.yaml", &role, &binding)
		binding.Subjects[0].Namespace = driverNamespace
		var policy admissionv1.ValidatingAdmissionPolicy
		var policyBinding admissionv1.ValidatingAdmissionPolicyBinding
		read("policy.yaml", &policy, &policyBinding)
		if _, err := client.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.RbacV1().ClusterRoles().Delete(ctx, role.Name, metav1.DeleteOptions{}) })
		if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, &binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.RbacV1().ClusterRoleBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{}) })
		if _, err := client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &policy, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, policy.Name, metav1.DeleteOptions{})
		})
		if _, err := client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &policyBinding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, policyBinding.Name, metav1.DeleteOptions{})
		})
	}
	setDriverArgs(t, args)
	// Cleanups run last-registered first: the driver loses the arguments
	// before its RBAC and policies go.
	t.Cleanup(func() {
		off := map[string]bool{}
		for arg := range args {
			off[arg] = false
		}
		setDriverArgs(t, off)
	})
}

// setDriverArg adds or removes an argument of the driver container and
// waits until the DaemonSet has rolled out.
func setDriverArg(t *testing.T, arg string, on bool) {
	t.Helper()
	setDriverArgs(t, map[string]bool{arg: on})
}

// setDriverArgs adds (true) or removes (false) arguments of the driver
// container in one change of the DaemonSet (one roll; none when nothing
// changes) and waits until it has rolled out.
func setDriverArgs(t *testing.T, set map[string]bool) {
	t.Helper()
	ctx := context.Background()
	dsc := client.AppsV1().DaemonSets(driverNamespace)
	ds, err := dsc.Get(ctx, "secretfs-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ds.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "driver" })
	args := slices.DeleteFunc(slices.Clone(ds.Spec.Template.Spec.Containers[i].Args), func(a string) bool { _, ok := set[a]; return ok })
	for _, arg := range slices.Sorted(maps.Keys(set)) {
		if set[arg] {
			args = append(args, arg)
		}
	}
	argsJSON, _ := yaml.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
		"containers": []any{map[string]any{"name": "driver", "args": args}}}}}})
	patch, err := yaml.YAMLToJSON(argsJSON)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dsc.Patch(ctx, ds.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	err = poll(podTimeout, func() (bool, error) {
		d, err := dsc.Get(ctx, ds.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		return rolledOut(d), nil
	})
	if err != nil {
		t.Fatalf("the driver DaemonSet did not roll out with %v", set)
	}
}

func rolledOut(d *appsv1.DaemonSet) bool {
	s := d.Status
	return s.ObservedGeneration >= d.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
		s.NumberReady == s.DesiredNumberScheduled && s.NumberUnavailable == 0
}
