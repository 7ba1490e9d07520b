//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

const managedLabel = "secrets-store.csi.k8s.io/managed"

// createSyncClass creates a fake-backend class with spec.secretObjects, as
// apiVersion (v1 or v1alpha1).
func createSyncClass(t *testing.T, ns, name, apiVersion string, objects []object, secretObjects []any) {
	t.Helper()
	createClassWithSync(t, ns, name, apiVersion, "fake", fakeParams(t, objects, nil), secretObjects)
}

// createClassWithSync creates a class of any provider with spec.secretObjects.
func createClassWithSync(t *testing.T, ns, name, apiVersion, provider string, params map[string]any, secretObjects []any) {
	t.Helper()
	class := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "secrets-store.csi.x-k8s.io/" + apiVersion,
		"kind":       "SecretProviderClass",
		"metadata":   map[string]any{"name": name, "namespace": ns},
		"spec":       map[string]any{"provider": provider, "parameters": params, "secretObjects": secretObjects},
	}}
	gvr := classGVR
	gvr.Version = apiVersion
	if _, err := dyn.Resource(gvr).Namespace(ns).Create(context.Background(), class, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating SecretProviderClass %s/%s as %s: %v", ns, name, apiVersion, err)
	}
}

func secretObject(name, typ string, data ...string) map[string]any {
	var d []any
	for i := 0; i < len(data); i += 2 {
		d = append(d, map[string]any{"objectName": data[i], "key": data[i+1]})
	}
	return map[string]any{"secretName": name, "type": typ, "labels": map[string]any{"app": "shop"}, "data": d}
}

// tlsBundle is a PEM bundle as Key Vault returns a certificate-backed
// secret: the key, then the certificate.
func tlsBundle(t *testing.T) string {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "shop.example"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p8, _ := x509.MarshalPKCS8PrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func getSecret(ns, name string) (*corev1.Secret, error) {
	return client.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
}

func waitSecret(t *testing.T, ns, name, what string, cond func(*corev1.Secret) bool) *corev1.Secret {
	t.Helper()
	var last *corev1.Secret
	err := poll(rotationTimeout, func() (bool, error) {
		s, err := getSecret(ns, name)
		if err != nil {
			return false, nil
		}
		last = s
		return cond(s), nil
	})
	if err != nil {
		t.Fatalf("Secret %s/%s: %s not reached; last seen: %+v", ns, name, what, last)
	}
	return last
}

func ownerNames(s *corev1.Secret) []string {
	var out []string
	for _, o := range s.OwnerReferences {
		out = append(out, o.Name)
	}
	slices.Sort(out)
	return out
}

// Secret sync, in the order a migration meets it: off by default (the pod
// is told), then on: a Deployment's env from a synced Secret, TLS split,
// owners (the ReplicaSet), scale down, rotation, deletion; an unmanaged Secret left alone;
// two classes in one pod, one of them created as v1alpha1.
func TestSecretSync(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	user, pass := "u-"+randHex(4), "p-"+randHex(8)
	bundle := tlsBundle(t)
	objects := []object{{ObjectName: "user", Value: user}, {ObjectName: "pass", Value: pass}, {ObjectName: "cert", ObjectAlias: "tls.pem", Value: bundle}}
	secretObjects := []any{
		secretObject("app-env", "Opaque", "user", "USER", "pass", "PASS"),
		secretObject("app-tls", "kubernetes.io/tls", "tls.pem", "tls.key", "tls.pem", "tls.crt"),
	}
	createSyncClass(t, ns, "app", "v1", objects, secretObjects)

	t.Run("off", func(t *testing.T) {
		pod := waitReady(t, createAppPod(t, ns, "sync-off", "app"))
		if got := readVolume(t, pod)["pass"].Content; got != pass {
			t.Errorf("file pass = %q", got)
		}
		waitEvent(t, pod, "SecretProviderClassIgnored", "spec.secretObjects", "--sync-secrets")
		if _, err := getSecret(ns, "app-env"); !apierrors.IsNotFound(err) {
			t.Errorf("with sync off a Secret exists (or: %v)", err)
		}
		deletePod(t, pod)
	})

	withComponents(t, "sync-secrets")

	t.Run("deployment", func(t *testing.T) {
		replicas := int32(2)
		spec := podSpec("", "app")
		spec.Containers[0].Env = []corev1.EnvVar{{Name: "PASS", ValueFrom: &corev1.EnvVarSource{
			SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "app-env"}, Key: "PASS"}}}}
		labels := map[string]string{"app": "shop"}
		dep, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "shop"},
			Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods := waitPods(t, ns, "app=shop", 2)
		for _, p := range pods {
			if got := readVolume(t, p)["pass"].Content; got != pass {
				t.Errorf("pod %s: file pass = %q", p.Name, got)
			}
			out, err := execIn(ctx, ns, p.Name, "app", "/testapp", "printenv", "PASS")
			if err != nil || out != pass {
				t.Errorf("pod %s: env PASS = %q, %v", p.Name, out, err)
			}
			// The container started on its first try: the Secret existed
			// before the publish returned.
			if rc := p.Status.ContainerStatuses[0].RestartCount; rc != 0 {
				t.Errorf("pod %s restarted %d times", p.Name, rc)
			}
			for _, e := range podEvents(p) {
				if e.Reason == "Failed" && strings.Contains(e.Message, "app-env") {
					t.Errorf("pod %s: %s", p.Name, e.Message)
				}
			}
		}
		// Owners as the Secrets Store CSI Driver makes them: the pods'
		// ReplicaSet, once.
		rs := []string{metav1.GetControllerOf(pods[0]).Name}
		env := waitSecret(t, ns, "app-env", "owned by the ReplicaSet", func(s *corev1.Secret) bool { return slices.Equal(ownerNames(s), rs) })
		if env.Type != corev1.SecretTypeOpaque || string(env.Data["USER"]) != user || string(env.Data["PASS"]) != pass ||
			env.Labels[managedLabel] != "true" || env.Labels["app"] != "shop" || len(env.Data) != 2 {
			t.Errorf("app-env: type %q labels %v keys %d", env.Type, env.Labels, len(env.Data))
		}
		tlsSec, err := getSecret(ns, "app-tls")
		if err != nil {
			t.Fatal(err)
		}
		if tlsSec.Type != corev1.SecretTypeTLS {
			t.Errorf("app-tls type %q", tlsSec.Type)
		}
		if _, err := tls.X509KeyPair(tlsSec.Data["tls.crt"], tlsSec.Data["tls.key"]); err != nil {
			t.Errorf("app-tls: tls.crt and tls.key do not pair: %v", err)
		}

		// Rotation: the file and the Secret show the new value.
		pass2 := "p2-" + randHex(8)
		// The fake backend's data is per node: change it on every node the
		// replicas run on.
		for _, node := range podNodes(pods) {
			writeFakeData(t, node, ns, "pass", pass2)
		}
		start := time.Now()
		waitSecret(t, ns, "app-env", "rotated", func(s *corev1.Secret) bool { return string(s.Data["PASS"]) == pass2 })
		t.Logf("rotated value in the Secret %v after the backend changed", time.Since(start).Round(time.Second))
		// Each replica's volume refreshes on its own republish; the Secret
		// follows the first, and never goes back to the old value.
		for _, p := range pods {
			if err := poll(rotationTimeout, func() (bool, error) { return readVolume(t, p)["pass"].Content == pass2, nil }); err != nil {
				t.Errorf("pod %s: file pass not rotated", p.Name)
			}
		}
		if s, err := getSecret(ns, "app-env"); err != nil || string(s.Data["PASS"]) != pass2 {
			t.Errorf("app-env after both volumes rotated: %v", err)
		}

		// Scale to 1: the ReplicaSet is still the one owner.
		one := int32(1)
		if _, err := client.AppsV1().Deployments(ns).Patch(ctx, dep.Name, types.MergePatchType,
			[]byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, one)), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		waitPods(t, ns, "app=shop", 1)
		if s, err := getSecret(ns, "app-env"); err != nil || !slices.Equal(ownerNames(s), rs) {
			t.Errorf("app-env after scaling to 1: %v", err)
		}

		// Delete the Deployment: the Secrets go with its ReplicaSet.
		bg := metav1.DeletePropagationForeground
		if err := client.AppsV1().Deployments(ns).Delete(ctx, dep.Name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"app-env", "app-tls"} {
			err := poll(podTimeout, func() (bool, error) {
				_, err := getSecret(ns, name)
				return apierrors.IsNotFound(err), nil
			})
			if err != nil {
				t.Errorf("Secret %s still there after the Deployment is gone", name)
			}
		}
		for _, node := range podNodes(pods) {
			removeFakeData(t, node, ns, "pass")
		}
	})

	t.Run("unmanaged", func(t *testing.T) {
		if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "taken"},
			Data: map[string][]byte{"PASS": []byte("theirs")}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		createSyncClass(t, ns, "clash", "v1", objects, []any{secretObject("taken", "Opaque", "pass", "PASS")})
		pod := waitReady(t, createAppPod(t, ns, "clash", "clash"))
		waitEvent(t, pod, "SecretSyncConflict", `"taken"`, managedLabel)
		s, err := getSecret(ns, "taken")
		if err != nil || string(s.Data["PASS"]) != "theirs" || len(s.OwnerReferences) != 0 || s.Labels[managedLabel] != "" {
			t.Errorf("the unmanaged Secret was touched: %+v, %v", s, err)
		}
		deletePod(t, pod)
	})

	t.Run("kubernetes backend rotation", func(t *testing.T) {
		v1 := "k1-" + randHex(8)
		src, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "src"},
			Data: map[string][]byte{"password": []byte(v1)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		createServiceAccount(t, ns, "reader")
		grantSecret(t, ns, "reader", "src", "get", "watch")
		list, err := yaml.Marshal([]map[string]any{{"secretName": "src", "key": "password", "path": "password"}})
		if err != nil {
			t.Fatal(err)
		}
		createClassWithSync(t, ns, "kube", "v1", "kubernetes", map[string]any{"objects": string(list)},
			[]any{secretObject("kube-env", "Opaque", "password", "PASSWORD")})
		pod := waitReady(t, createAppPodAs(t, ns, "kube", "reader", "kube"))
		if s, err := getSecret(ns, "kube-env"); err != nil || string(s.Data["PASSWORD"]) != v1 {
			t.Fatalf("kube-env after the publish: %v", err)
		}
		v2 := "k2-" + randHex(8)
		updateSecret(t, src, "password", v2)
		start := time.Now()
		waitSecret(t, ns, "kube-env", "rotated by the watch", func(s *corev1.Secret) bool { return string(s.Data["PASSWORD"]) == v2 })
		t.Logf("kubernetes backend: the synced Secret has the new value %v after the source Secret changed", time.Since(start).Round(time.Millisecond))
		if got := readVolume(t, pod)["password"].Content; got != v2 {
			t.Errorf("file password = %q", got)
		}
		deletePod(t, pod)
	})

	t.Run("two classes, one v1alpha1", func(t *testing.T) {
		createSyncClass(t, ns, "first", "v1", []object{{ObjectName: "a", Value: "value-a"}}, []any{secretObject("first-env", "Opaque", "a", "A")})
		createSyncClass(t, ns, "second", "v1alpha1", []object{{ObjectName: "b", Value: "value-b"}}, []any{secretObject("second-env", "Opaque", "b", "B")})
		spec := podSpec("", "first")
		second := spec.Volumes[0]
		second.Name = "second"
		second.CSI = second.CSI.DeepCopy()
		second.CSI.VolumeAttributes = map[string]string{"secretProviderClass": "second"}
		spec.Volumes = append(spec.Volumes, second)
		spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "second", MountPath: "/mnt/second", ReadOnly: true})
		pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "two"}, Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod = waitReady(t, pod)
		for name, key := range map[string]string{"first-env": "A", "second-env": "B"} {
			s, err := getSecret(ns, name)
			if err != nil || len(s.Data[key]) == 0 || len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != pod.UID {
				t.Errorf("Secret %s: %+v, %v", name, s, err)
			}
		}
		deletePod(t, pod)
	})
}

// waitPods waits until exactly n Ready pods match selector and returns them.
func waitPods(t *testing.T, ns, selector string, n int) []*corev1.Pod {
	t.Helper()
	var ready []*corev1.Pod
	err := poll(podTimeout, func() (bool, error) {
		list, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		ready = nil
		for i := range list.Items {
			p := &list.Items[i]
			if p.DeletionTimestamp != nil {
				return false, nil
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready = append(ready, p)
				}
			}
		}
		return len(ready) == n && len(list.Items) == n, nil
	})
	if err != nil {
		t.Fatalf("want %d Ready pods %q in %s, have %d", n, selector, ns, len(ready))
	}
	return ready
}
