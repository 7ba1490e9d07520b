//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// A class renders one .env file from two objects and hides the objects;
// the app's main process starts with the variables from that file.
func TestContentTemplatedEnv(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	user, password := "app-"+randHex(4), "p@ss "+randHex(8)
	createFakeClass(t, ns, "env", []object{{ObjectName: "user", Value: user}, {ObjectName: "password", Value: password}}, map[string]string{
		"secretfs.dev/templates": "- path: app.env\n  mode: \"0400\"\n  template: |\n" +
			"    DB_USER={{ .user }}\n    DB_PASSWORD={{ .password | quote }}\n    DB_URL=postgres://{{ .user }}:{{ .password | urlquery }}@db.invalid/app\n",
		"secretfs.dev/hideObjects": "true",
	})
	spec := podSpec("", "env")
	spec.Containers[0].Command = []string{"/testapp", "env", mountPath + "/app.env", "sleep"}
	pod, err := client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod = waitReady(t, pod)
	files := readVolume(t, pod)
	if len(files) != 1 || files["app.env"].Mode != "0400" {
		t.Fatalf("pod sees %v, want only app.env (0400)", files)
	}
	var raw struct {
		Base64 string `json:"base64"`
	}
	execJSON(t, ns, pod.Name, "app", &raw, "cat", "/proc/1/environ")
	environ, err := base64.StdEncoding.DecodeString(raw.Base64)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(environ), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	want := map[string]string{"DB_USER": user, "DB_PASSWORD": password,
		"DB_URL": "postgres://" + user + ":" + strings.ReplaceAll(strings.ReplaceAll(password, "@", "%40"), " ", "+") + "@db.invalid/app"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("the app's %s is %q, want %q", k, env[k], v)
		}
	}
	deletePod(t, pod)
	assertNoTraces(t, pod, password)
}

// keyPath takes one value out of a JSON document in a Kubernetes Secret.
func TestContentJSONKeyFromSecret(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	password := "pw-" + randHex(8)
	doc := `{"db":{"user":"app","password":"` + password + `","hosts":["a.invalid","b.invalid"]}}`
	if _, err := client.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "config"},
		Data:       map[string][]byte{"config.json": []byte(doc)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createServiceAccount(t, ns, "reader")
	grantSecret(t, ns, "reader", "config", "get", "watch")
	objects := []map[string]any{
		{"secretName": "config", "key": "config.json", "path": "db-password", "keyPath": "db.password", "filePermission": "0400"},
		{"secretName": "config", "key": "config.json", "path": "second-host", "keyPath": "db.hosts[1]"},
		{"secretName": "config", "key": "config.json", "path": "db.json", "keyPath": ".db"},
	}
	list, err := yaml.Marshal(objects)
	if err != nil {
		t.Fatal(err)
	}
	createClass(t, ns, "json-key", "kubernetes", map[string]any{"objects": string(list)})
	pod := waitReady(t, createAppPodAs(t, ns, "app", "reader", "json-key"))
	got := readVolume(t, pod)
	if got["db-password"] != (file{Mode: "0400", Content: password}) || got["second-host"].Content != "b.invalid" {
		t.Fatalf("pod sees %v", got)
	}
	var db map[string]any
	if err := json.Unmarshal([]byte(got["db.json"].Content), &db); err != nil || db["password"] != password {
		t.Fatalf("db.json = %q (%v)", got["db.json"].Content, err)
	}
	deletePod(t, pod)
	assertNoTraces(t, pod, password)
}

// An optional object that does not exist is left out, said once in a
// Normal event; the pod starts with the others.
func TestContentOptionalMissingObject(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	value := "v-" + randHex(8)
	list := "- objectName: present\n  value: " + value + "\n- objectName: absent-" + randHex(4) + "\n  optional: true\n"
	createClass(t, ns, "optional", "fake", map[string]any{"objects": list})
	pod := waitReady(t, createAppPod(t, ns, "app", "optional"))
	assertFiles(t, pod, map[string]file{"present": {Mode: "0644", Content: value}})
	msg := waitEvent(t, pod, "SecretObjectsOmitted", `SecretProviderClass "optional"`, "absent-")
	t.Logf("event: %s", msg)
	n := 0
	for _, e := range podEvents(pod) {
		if e.Reason == "SecretObjectsOmitted" {
			n += int(max(e.Count, 1))
		}
	}
	if n != 1 {
		t.Errorf("%d SecretObjectsOmitted events after several republishes, want 1", n)
	}

	// Without optional, the same missing object keeps the pod from starting.
	createClass(t, ns, "required", "fake", map[string]any{"objects": strings.Replace(list, "  optional: true\n", "", 1)})
	stuck := createAppPod(t, ns, "stuck", "required")
	waitEvent(t, stuck, "FailedMount", "NotFound", "absent-")
	deletePod(t, stuck)
	deletePod(t, pod)
	assertNoTraces(t, pod, value)
}

// A class sets its own rotation interval; the driver clamps it between its
// minimum and maximum and shows it in the volume's status file.
func TestContentClassRotationInterval(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	createFakeClass(t, ns, "fast", []object{{ObjectName: "token"}}, map[string]string{"secretfs.dev/rotationInterval": "2s"})
	createFakeClass(t, ns, "slow", []object{{ObjectName: "token"}}, map[string]string{"secretfs.dev/rotationInterval": "9999h"})
	nodes, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) == 0 {
		t.Fatalf("listing nodes: %v", err)
	}

	for _, n := range nodes.Items {
		writeFakeData(t, n.Name, ns, "token", "v1")
	}
	fast := waitReady(t, createAppPod(t, ns, "fast", "fast"))
	slow := waitReady(t, createAppPod(t, ns, "slow", "slow"))
	for pod, want := range map[*corev1.Pod]string{fast: "2s", slow: "24h0m0s"} {
		var raw struct {
			Base64 string `json:"base64"`
		}
		execJSON(t, ns, pod.Name, "app", &raw, "cat", mountPath+"/..secretfs.json")
		status, _ := base64.StdEncoding.DecodeString(raw.Base64)
		var st struct {
			RotationInterval string `json:"rotationInterval"`
		}
		if err := json.Unmarshal(status, &st); err != nil || st.RotationInterval != want {
			t.Errorf("pod %s: status %s, want rotationInterval %s", pod.Name, status, want)
		}
	}

	writeFakeData(t, fast.Spec.NodeName, ns, "token", "v2")
	if err := poll(rotationTimeout, func() (bool, error) { return readVolume(t, fast)["token"].Content == "v2", nil }); err != nil {
		t.Fatalf("the 2s class did not rotate: %v", readVolume(t, fast))
	}
	deletePod(t, fast)
	deletePod(t, slow)
}
