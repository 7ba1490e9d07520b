//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The promise's second half, per node: a secret leaves a node with the last
// pod there that asks for it. Three pods of one identity on node 1, one on
// node 2: deleting node 1's pods one by one keeps node 1's cache entry and
// watch until the last is gone; then node 1 holds no mount, no cache entry
// and no open watch of the Secret (API audit log, by source address), while
// node 2 still serves the Secret and rotates it when it changes.
func TestSecretLeavesANodeWithItsLastPod(t *testing.T) {
	ctx := context.Background()
	nodes := severalNodes(t)
	auditPath := auditLogPath(t)
	ns := newNamespace(t)
	dbSecretForReader(t, ns, "v1-")

	n1, n2 := nodes[0], nodes[1]
	d1, d2 := driverPod(t, n1), driverPod(t, n2)
	byIP := map[string]string{d1.Status.PodIP: n1, d2.Status.PodIP: n2}
	base1, base2 := scrapeDriver(t, d1), scrapeDriver(t, d2)

	pinned := func(name, node string) *corev1.Pod {
		spec := podSpec("reader", "db")
		spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
		p, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var onN1 []*corev1.Pod
	for _, name := range []string{"a", "b", "c"} {
		onN1 = append(onN1, pinned(name, n1))
	}
	p2 := waitReady(t, pinned("d", n2))
	for i, p := range onN1 {
		onN1[i] = waitReady(t, p)
		if onN1[i].Spec.NodeName != n1 {
			t.Fatalf("pod %s on %s, pinned to %s", p.Name, onN1[i].Spec.NodeName, n1)
		}
	}
	entries := func(d *corev1.Pod, base driverMetrics) float64 {
		return scrapeDriver(t, d).cacheEntries - base.cacheEntries
	}
	if e1, e2 := entries(d1, base1), entries(d2, base2); e1 != 1 || e2 != 1 {
		t.Fatalf("new cache entries: node %s %v, node %s %v; want 1 each (one identity and object set per node)", n1, e1, n2, e2)
	}
	if w := openWatches(t, auditPath, ns, "db", byIP); w[n1] < 1 || w[n2] < 1 {
		t.Fatalf("open watches of the Secret by node: %v; want one on each of %s and %s", w, n1, n2)
	}

	// One by one: while a pod of the identity is left on node 1, its cache
	// entry and watch stay; each deleted pod's mount goes.
	for i, p := range onN1 {
		deletePod(t, p)
		if m := nodeMounts(t, n1, string(p.UID)); len(m) != 0 {
			t.Errorf("pod %s deleted, node %s still has its mounts %+v", p.Name, n1, m)
		}
		if i == len(onN1)-1 {
			break
		}
		if e := entries(d1, base1); e != 1 {
			t.Errorf("after deleting %d of 3 pods on %s: %v new cache entries, want 1", i+1, n1, e)
		}
		if w := openWatches(t, auditPath, ns, "db", byIP); w[n1] < 1 {
			t.Errorf("after deleting %d of 3 pods on %s: open watches %v, want one there", i+1, n1, w)
		}
	}

	// The last one gone: nothing of the Secret on node 1.
	start := time.Now()
	var e1 float64
	var w map[string]int
	err := poll(time.Minute, func() (bool, error) {
		e1, w = entries(d1, base1), openWatches(t, auditPath, ns, "db", byIP)
		return e1 == 0 && w[n1] == 0, nil
	})
	if err != nil {
		t.Fatalf("after the last pod left %s: %v new cache entries, open watches %v; want none there", n1, e1, w)
	}
	t.Logf("node %s dropped the cache entry and the watch %v after its last pod was gone; open watches now %v",
		n1, time.Since(start).Round(100*time.Millisecond), w)

	// Node 2 still serves, and rotates.
	if e := entries(d2, base2); e != 1 || w[n2] < 1 {
		t.Fatalf("node %s: %v new cache entries, open watches %v; want its entry and watch kept", n2, e, w)
	}
	v2 := "v2-" + randHex(8)
	if _, err := client.CoreV1().Secrets(ns).Update(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Data:       map[string][]byte{"password": []byte(v2)},
	}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := poll(rotationTimeout, func() (bool, error) { return readVolume(t, p2)["password"].Content == v2, nil }); err != nil {
		t.Fatalf("pod %s on %s did not see the rotated value: %v", p2.Name, n2, readVolume(t, p2))
	}
	t.Logf("pod on %s rotated %v after the Secret changed", n2, time.Since(start).Round(100*time.Millisecond))
	deletePod(t, p2)
}

// openWatch is a watch the audit log shows started and not completed.
type openWatch struct {
	AuditID  string
	SourceIP string
	User     string
	URI      string
	Received time.Time
}

// openWatches counts, by node (the request's source address in byIP), the
// watches of Secret ns/name the audit log shows started and not completed.
func openWatches(t *testing.T, path, ns, name string, byIP map[string]string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, w := range openWatchList(t, path, ns, name) {
		node := "other"
		if byIP[w.SourceIP] != "" {
			node = byIP[w.SourceIP]
		}
		out[node]++
	}
	return out
}

// openWatchList lists the watches of Secret ns/name (or of Secrets of ns
// by label) the audit log shows started and not completed. A watch the
// API server refused is never open: a request that fails authentication
// (a token of a deleted pod, say) is logged at stage ResponseStarted with
// its 401 and has no ResponseComplete.
func openWatchList(t *testing.T, path, ns, name string) []openWatch {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	started := map[string]openWatch{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			AuditID    string   `json:"auditID"`
			Stage      string   `json:"stage"`
			Verb       string   `json:"verb"`
			RequestURI string   `json:"requestURI"`
			SourceIPs  []string `json:"sourceIPs"`
			User       struct {
				Username string `json:"username"`
			} `json:"user"`
			Received       time.Time `json:"requestReceivedTimestamp"`
			ResponseStatus *struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
			ObjectRef *struct {
				Resource, Namespace, Name string
			} `json:"objectRef"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) != nil || ev.ObjectRef == nil || ev.Verb != "watch" {
			continue
		}
		r := ev.ObjectRef
		if r.Resource != "secrets" || r.Namespace != ns || (r.Name != name && r.Name != "") {
			continue
		}
		switch ev.Stage {
		case "ResponseStarted":
			if ev.ResponseStatus != nil && ev.ResponseStatus.Code != http.StatusOK {
				continue
			}
			w := openWatch{AuditID: ev.AuditID, User: ev.User.Username, URI: ev.RequestURI, Received: ev.Received}
			if len(ev.SourceIPs) > 0 {
				w.SourceIP = ev.SourceIPs[0]
			}
			started[ev.AuditID] = w
		case "ResponseComplete", "Panic":
			delete(started, ev.AuditID)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	out := make([]openWatch, 0, len(started))
	for _, w := range started {
		out = append(out, w)
	}
	return out
}
