//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Mount by selector with the kubernetes backend: a class selects the
// Secrets of the pod's namespace by label, listed and watched with the
// pod's token (a Role with list and watch, no resourceNames). A Secret
// labelled after the pod started appears in the volume as <secret>/<key>
// at the next refresh (the selector's watch makes that seconds); one whose
// label is removed disappears.
func TestKubernetesSelector(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	values := map[string]string{}
	for _, name := range []string{"alpha", "beta", "later"} {
		values[name] = name + "-" + randHex(8)
		labels := map[string]string{"app": "shop"}
		if name == "later" {
			labels = map[string]string{"app": "other"}
		}
		_, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Data:       map[string][]byte{"password": []byte(values[name])},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating Secret: %v", err)
		}
	}
	createServiceAccount(t, ns, "reader")
	_, err := client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "list-secrets"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"list", "watch"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Role: %v", err)
	}
	_, err = client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reader-list-secrets"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "list-secrets"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "reader", Namespace: ns}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating RoleBinding: %v", err)
	}
	createClass(t, ns, "shop", "kubernetes", map[string]any{"objects": "- labelSelector: app=shop\n  filePermission: \"0400\"\n"})

	pod := waitReady(t, createAppPodAs(t, ns, "app", "reader", "shop"))
	want := func(names ...string) map[string]file {
		out := map[string]file{}
		for _, n := range names {
			out[n+"/password"] = file{Mode: "0400", Content: values[n]}
		}
		return out
	}
	wait := func(what string, names ...string) {
		t.Helper()
		start := time.Now()
		var got map[string]file
		if err := poll(60*time.Second, func() (bool, error) {
			got = readVolume(t, pod)
			return fmt.Sprint(got) == fmt.Sprint(want(names...)), nil
		}); err != nil {
			t.Fatalf("%s: the volume holds %v, want %v", what, got, want(names...))
		}
		t.Logf("%s: the volume matched after %v", what, time.Since(start).Round(100*time.Millisecond))
	}
	wait("at start", "alpha", "beta")

	relabel := func(name, value string) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"labels":{"app":%q}}}`, value)
		if _, err := client.CoreV1().Secrets(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	relabel("later", "shop")
	wait("a Secret labelled later", "alpha", "beta", "later")
	relabel("alpha", "gone")
	wait("a Secret unlabelled", "beta", "later")

	deletePod(t, pod)
	assertNoTraces(t, pod, values["alpha"], values["beta"], values["later"])
}
