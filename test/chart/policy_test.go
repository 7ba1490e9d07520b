package chart

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The chart's sync-secrets admission policy, installed on a real API server
// with the chart's RBAC and service account (values ci/full-values.yaml):
// the driver's own token is refused a service-account-token Secret, an
// unmanaged one and one owned by anything but pods and their controllers,
// and may write a managed Secret owned by a pod or a pod's controller.
func TestSyncPolicyFromChart(t *testing.T) {
	h := newHelm(t)
	c := startCluster(t)
	c.createNamespace(t, namespace)
	c.createNamespace(t, "team-a")
	var full chartCase
	for _, cs := range cases {
		if cs.name == "full" {
			full = cs
		}
	}
	r := parseRendered(t, h.must(full.templateArgs()...))
	var docs [][]byte
	for _, d := range r.docs {
		for _, kind := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
			if strings.Contains(string(d), "\nkind: "+kind+"\n") {
				docs = append(docs, d)
			}
		}
	}
	// The restart-on-change policy and binding come along (full-values
	// turns restarts on too).
	if len(docs) != 7 {
		t.Fatalf("%d of the service account, role, binding, and the two policies and policy bindings rendered", len(docs))
	}
	c.apply(t, docs, false)
	ctx := context.Background()
	sa := r.daemonSet.Spec.Template.Spec.ServiceAccountName
	tok, _, err := c.Token(ctx, namespace, sa, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	drv := kubernetes.NewForConfigOrDie(&rest.Config{Host: c.Host, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData}})
	secret := func(name string, typ corev1.SecretType, labels map[string]string, owner string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Type: typ}
		if owner != "" {
			// owner is "[apiVersion/]Kind"; the core group when bare.
			apiVersion, kind := "v1", owner
			if i := strings.LastIndex(owner, "/"); i >= 0 {
				apiVersion, kind = owner[:i], owner[i+1:]
			}
			s.OwnerReferences = []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: "x", UID: "uid-x"}}
		}
		if typ == corev1.SecretTypeServiceAccountToken {
			s.Annotations = map[string]string{corev1.ServiceAccountNameKey: "default"}
		}
		return s
	}
	managed := map[string]string{"secrets-store.csi.k8s.io/managed": "true"}
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := drv.CoreV1().Secrets("team-a").Create(ctx, secret("probe", corev1.SecretTypeOpaque, nil, "Pod"), dry)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the chart's policy not in force after 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for what, s := range map[string]*corev1.Secret{
		"a service-account token":  secret("token", corev1.SecretTypeServiceAccountToken, managed, "Pod"),
		"an unmanaged Secret":      secret("unmanaged", corev1.SecretTypeOpaque, nil, "Pod"),
		"a Secret owned by a Node": secret("node", corev1.SecretTypeOpaque, managed, "Node"),
		// Owners are exactly what --sync-owner makes: pods and the
		// controllers of pods.
		"owned by a Deployment":           secret("deploy", corev1.SecretTypeOpaque, managed, "apps/v1/Deployment"),
		"owned by a CronJob":              secret("cronjob", corev1.SecretTypeOpaque, managed, "batch/v1/CronJob"),
		"owned by a ReplicaSet of v1":     secret("rs-core", corev1.SecretTypeOpaque, managed, "ReplicaSet"),
		"owned by a custom ReplicaSet":    secret("rs-custom", corev1.SecretTypeOpaque, managed, "example.com/v1/ReplicaSet"),
		"owned by a Pod of another group": secret("pod-custom", corev1.SecretTypeOpaque, managed, "example.com/v1/Pod"),
	} {
		if _, err := drv.CoreV1().Secrets("team-a").Create(ctx, s, dry); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "sync-secrets") {
			t.Errorf("%s: %v, want the policy's refusal", what, err)
		}
	}
	for _, owner := range []string{"Pod", "apps/v1/ReplicaSet", "apps/v1/StatefulSet", "apps/v1/DaemonSet", "batch/v1/Job"} {
		if _, err := drv.CoreV1().Secrets("team-a").Create(ctx, secret("synced", corev1.SecretTypeOpaque, managed, owner), dry); err != nil {
			t.Errorf("a managed Secret owned by %s: %v", owner, err)
		}
	}
	if _, err := drv.CoreV1().Secrets("team-a").Get(ctx, "any", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get with the driver's token: %v, want Forbidden", err)
	}
}
