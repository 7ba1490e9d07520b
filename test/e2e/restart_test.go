//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const restartAnnotation = "secretfs.dev/restartedFor"

// envDeployment creates a Deployment of replicas pods spread over the
// nodes, each mounting class and reading PASS from the synced Secret
// secret as an environment variable.
func envDeployment(t *testing.T, ns, name, sa, class, secret string, replicas int32) *appsv1.Deployment {
	t.Helper()
	spec := podSpec(sa, class)
	spec.Containers[0].Env = []corev1.EnvVar{{Name: "PASS", ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: "PASS"}}}}
	labels := map[string]string{"app": name}
	spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
		WhenUnsatisfiable: corev1.ScheduleAnyway, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}}
	dep, err := client.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return dep
}

func replicaSets(t *testing.T, ns, app string) []appsv1.ReplicaSet {
	t.Helper()
	list, err := client.AppsV1().ReplicaSets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// rolledOutDeployment waits until every replica runs the Deployment's
// latest template and no old pod is left.
func rolledOutDeployment(t *testing.T, dep *appsv1.Deployment) *appsv1.Deployment {
	t.Helper()
	var d *appsv1.Deployment
	err := poll(podTimeout+rotationTimeout, func() (bool, error) {
		var err error
		d, err = client.AppsV1().Deployments(dep.Namespace).Get(context.Background(), dep.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		s := d.Status
		return s.ObservedGeneration == d.Generation && s.UpdatedReplicas == *d.Spec.Replicas && s.Replicas == *d.Spec.Replicas &&
			s.AvailableReplicas == *d.Spec.Replicas, nil
	})
	if err != nil {
		t.Fatalf("Deployment %s/%s not rolled out: %+v", dep.Namespace, dep.Name, d.Status)
	}
	return d
}

// Restart on change on a real cluster: a Deployment of 3 replicas over the
// nodes reads a synced Secret as env vars. One rotation of the source makes
// exactly one new ReplicaSet, whose pods all have the new value; a change
// that leaves the content as it is restarts nothing; a class without the
// opt-in never restarts.
func TestRestartOnChange(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pass := "p-" + randHex(8)
	newSource := func(name string) *corev1.Secret {
		s, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name},
			Data: map[string][]byte{"pass": []byte(pass)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	src, plainSrc := newSource("src"), newSource("plain-src")
	createServiceAccount(t, ns, "reader")
	grantSecret(t, ns, "reader", "src", "get", "watch")
	grantSecret(t, ns, "reader", "plain-src", "get", "watch")
	classParams := func(secret string, restart bool) map[string]any {
		list, err := yaml.Marshal([]map[string]any{{"secretName": secret, "key": "pass", "path": "pass"}})
		if err != nil {
			t.Fatal(err)
		}
		p := map[string]any{"objects": string(list)}
		if restart {
			p["secretfs.dev/onChange"] = "restart"
		}
		return p
	}
	createClassWithSync(t, ns, "app", "v1", "kubernetes", classParams("src", true),
		[]any{map[string]any{"secretName": "app-env", "type": "Opaque", "data": []any{map[string]any{"objectName": "pass", "key": "PASS"}}}})
	createClassWithSync(t, ns, "plain", "v1", "kubernetes", classParams("plain-src", false),
		[]any{map[string]any{"secretName": "plain-env", "type": "Opaque", "data": []any{map[string]any{"objectName": "pass", "key": "PASS"}}}})
	withComponents(t, "sync-secrets", "restart-on-change")

	dep := envDeployment(t, ns, "shop", "reader", "app", "app-env", 3)
	plainDep := envDeployment(t, ns, "plain", "reader", "plain", "plain-env", 1)
	pods := waitPods(t, ns, "app=shop", 3)
	plainPods := waitPods(t, ns, "app=plain", 1)
	nodes := map[string]bool{}
	for _, p := range pods {
		nodes[p.Spec.NodeName] = true
	}
	t.Logf("3 replicas on %d nodes", len(nodes))
	gen := rolledOutDeployment(t, dep).Generation
	if rs := replicaSets(t, ns, "shop"); len(rs) != 1 {
		t.Fatalf("%d ReplicaSets before any rotation", len(rs))
	}

	// A class without the opt-in: the content changes, nothing restarts.
	pass2 := "p2-" + randHex(8)
	updateSecret(t, plainSrc, "pass", pass2)
	if err := poll(rotationTimeout, func() (bool, error) { return readVolume(t, plainPods[0])["pass"].Content == pass2, nil }); err != nil {
		t.Fatal("the plain class's volume did not rotate")
	}

	// The same content written again (a label changes the Secret's version,
	// not its data): the volumes refresh, nothing restarts.
	src.Labels = map[string]string{"touched": "yes"}
	if _, err := client.CoreV1().Secrets(ns).Update(ctx, src, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A refresh cycle of every node passes: the plain class rotates once
	// more and its pod sees it.
	pass3 := "p3-" + randHex(8)
	updateSecret(t, mustSecret(t, ns, "plain-src"), "pass", pass3)
	if err := poll(rotationTimeout, func() (bool, error) { return readVolume(t, plainPods[0])["pass"].Content == pass3, nil }); err != nil {
		t.Fatal("the plain class's volume did not rotate again")
	}
	time.Sleep(2 * 5 * time.Second) // two of the overlay's rotation intervals
	for name, want := range map[string]int64{"shop": gen, "plain": plainDep.Generation} {
		d, err := client.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Generation != want || d.Spec.Template.Annotations[restartAnnotation] != "" {
			t.Errorf("Deployment %s changed without a content change of an opted-in class: generation %d -> %d, annotations %v",
				name, want, d.Generation, d.Spec.Template.Annotations)
		}
	}
	if rs := replicaSets(t, ns, "plain"); len(rs) != 1 {
		t.Errorf("the plain Deployment has %d ReplicaSets", len(rs))
	}

	// One rotation: one new ReplicaSet, every new pod has the new value in
	// its environment and its volume.
	newPass := "rotated-" + randHex(8)
	updateSecret(t, mustSecret(t, ns, "src"), "pass", newPass)
	start := time.Now()
	var d *appsv1.Deployment
	if err := poll(rotationTimeout, func() (bool, error) {
		var err error
		d, err = client.AppsV1().Deployments(ns).Get(ctx, "shop", metav1.GetOptions{})
		return err == nil && d.Generation != gen, nil
	}); err != nil {
		t.Fatal("the Deployment was not restarted after the rotation")
	}
	t.Logf("restart annotation written %v after the rotation", time.Since(start).Round(time.Second))
	value := d.Spec.Template.Annotations[restartAnnotation]
	if len(value) != 32 || d.Generation != gen+1 {
		t.Errorf("after one rotation: generation %d (was %d), annotation %q", d.Generation, gen, value)
	}
	d = rolledOutDeployment(t, d)
	newPods := waitPods(t, ns, "app=shop", 3)
	for _, p := range newPods {
		out, err := execIn(ctx, ns, p.Name, "app", "/testapp", "printenv", "PASS")
		if err != nil || out != newPass {
			t.Errorf("new pod %s: env PASS = %q, %v", p.Name, out, err)
		}
		if got := readVolume(t, p)["pass"].Content; got != newPass {
			t.Errorf("new pod %s: file pass = %q", p.Name, got)
		}
	}
	// Every node saw the change, and the new pods' first publishes are
	// not changes: still one rollout after a few refresh intervals.
	time.Sleep(2 * 5 * time.Second)
	d, err := client.AppsV1().Deployments(ns).Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rs := replicaSets(t, ns, "shop"); len(rs) != 2 || d.Generation != gen+1 || d.Spec.Template.Annotations[restartAnnotation] != value {
		t.Errorf("after one rotation: %d ReplicaSets (want 2), generation %d (want %d)", len(rs), d.Generation, gen+1)
	}
	// The Normal Event on an old pod says what was restarted and why.
	var told bool
	for _, p := range pods {
		for _, e := range podEvents(p) {
			if e.Reason == "SecretRestart" && e.Type == corev1.EventTypeNormal && strings.Contains(e.Message, `Deployment "shop"`) &&
				strings.Contains(e.Message, `SecretProviderClass "app"`) {
				told = true
			}
		}
	}
	if !told {
		t.Error("no Normal SecretRestart Event on the old pods naming the Deployment and the class")
	}
}

func mustSecret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	s, err := getSecret(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
