//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/test/ci"
)

// The promise of README's first paragraph, per node: a secret is fetched
// only on the node where a pod that asks for it runs. A pod pinned to one
// node, reading a Kubernetes Secret: that node's driver has its tmpfs, its
// backend fetch and its cache entry (metrics); every other node has no
// mount, no fetch, no new cache entry, and the API server's audit log shows
// reads of the Secret only from that node's driver (by source address) and
// only with the pod's service account.
func TestSecretOnlyOnTheNodeWhereThePodRuns(t *testing.T) {
	ctx := context.Background()
	nodes := severalNodes(t)
	auditPath := auditLogPath(t)
	ns := newNamespace(t)
	value := dbSecretForReader(t, ns, "pinned-")

	target := nodes[0]
	drivers := map[string]*corev1.Pod{}
	before := map[string]driverMetrics{}
	for _, n := range nodes {
		drivers[n] = driverPod(t, n)
		before[n] = scrapeDriver(t, drivers[n])
	}

	spec := podSpec("reader", "db")
	spec.NodeSelector = map[string]string{"kubernetes.io/hostname": target}
	pod, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pinned"}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod = waitReady(t, pod)
	if pod.Spec.NodeName != target {
		t.Fatalf("pod runs on %s, pinned to %s", pod.Spec.NodeName, target)
	}
	if got := readVolume(t, pod)["password"].Content; got != value {
		t.Fatalf("the pod reads %q", got)
	}

	for _, n := range nodes {
		after := scrapeDriver(t, drivers[n])
		fetches := after.fetches["kubernetes"] - before[n].fetches["kubernetes"]
		entries := after.cacheEntries - before[n].cacheEntries
		mounts := nodeMounts(t, n, string(pod.UID))
		t.Logf("node %s: %d mounts of the pod, %v kubernetes fetches, cache entries %+v", n, len(mounts), fetches, entries)
		if n == target {
			if len(mounts) != 1 || mounts[0].FSType != "tmpfs" || fetches < 1 || entries != 1 {
				t.Errorf("node %s (the pod's): mounts %+v, fetches %v, new cache entries %v; want one tmpfs, a fetch and one entry", n, mounts, fetches, entries)
			}
			continue
		}
		if len(mounts) != 0 || fetches != 0 || entries != 0 {
			t.Errorf("node %s (not the pod's): mounts %+v, fetches %v, new cache entries %v; want none", n, mounts, fetches, entries)
		}
	}

	// Who read the Secret, from which node: the driver pods' addresses are
	// their nodes' (each node has its own pod subnet).
	byIP := map[string]string{}
	for n, d := range drivers {
		byIP[d.Status.PodIP] = n
	}
	reader := "system:serviceaccount:" + ns + ":reader"
	reads := auditedReadsByNode(t, auditPath, ns, "db", byIP)
	t.Logf("reads of Secret %s/db in the audit log, by node, user, verb and code: %v", ns, reads)
	for k := range reads {
		if !strings.HasPrefix(k, target+" "+reader+" ") {
			t.Errorf("read of the Secret not by the pod's node and service account: %s (all: %v)", k, reads)
		}
	}
	if reads[target+" "+reader+" watch 200"]+reads[target+" "+reader+" get 200"] == 0 {
		t.Errorf("the audit log has no read of the Secret by %s from node %s: %v", reader, target, reads)
	}
	deletePod(t, pod)
}

// severalNodes is readyNodes of a cluster of at least 2 nodes: the
// promises per node need a node without the pod.
func severalNodes(t *testing.T) []string {
	nodes := readyNodes(t)
	if len(nodes) < 2 {
		ci.Missing(t, "needs a cluster of at least 2 nodes, has %d (make e2e starts 3)", len(nodes))
	}
	return nodes
}

// auditLogPath is the API server's audit log (SECRETFS_AUDIT_LOG): it shows
// which node's driver read or watches a Secret.
func auditLogPath(t *testing.T) string {
	path := os.Getenv("SECRETFS_AUDIT_LOG")
	if path == "" {
		t.Fatal("SECRETFS_AUDIT_LOG is not set: the API server's audit log shows which node reads and watches the Secret")
	}
	return path
}

// dbSecretForReader makes what the per-node proofs mount: the Secret db
// (password = prefix + random), the service account reader allowed to get
// and watch it, and the class db of the kubernetes backend; it returns the
// value.
func dbSecretForReader(t *testing.T, ns, prefix string) string {
	value := prefix + randHex(8)
	if _, err := client.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Data:       map[string][]byte{"password": []byte(value)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createServiceAccount(t, ns, "reader")
	grantSecret(t, ns, "reader", "db", "get", "watch")
	createClass(t, ns, "db", "kubernetes", map[string]any{"objects": "- {secretName: db, key: password}\n"})
	return value
}

// readyNodes returns the names of the Ready nodes, sorted.
func readyNodes(t *testing.T) []string {
	t.Helper()
	list, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && !n.Spec.Unschedulable {
				out = append(out, n.Name)
			}
		}
	}
	return out
}

// driverMetrics is what the node tests read from a driver's /metrics.
type driverMetrics struct {
	fetches      map[string]float64 // secretfs_provider_fetches_total by provider
	cacheEntries float64            // secretfs_cache_entries
	mounted      float64            // secretfs_volumes_mounted
}

// scrapeDriver reads the driver pod's /metrics on its pod address (the
// --metrics-addr of deploy/: $(POD_IP):9809).
func scrapeDriver(t *testing.T, d *corev1.Pod) driverMetrics {
	t.Helper()
	port := "9809"
	for _, c := range d.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "metrics" {
				port = strconv.Itoa(int(p.ContainerPort))
			}
		}
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + net.JoinHostPort(d.Status.PodIP, port) + "/metrics")
	if err != nil {
		t.Fatalf("metrics of driver pod %s on %s (the tests must reach pod addresses): %v", d.Name, d.Spec.NodeName, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics of driver pod %s: %s: %v", d.Name, resp.Status, err)
	}
	m := driverMetrics{fetches: map[string]float64{}}
	for _, line := range strings.Split(string(body), "\n") {
		name, rest, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		switch {
		case name == "secretfs_cache_entries":
			m.cacheEntries = v
		case name == "secretfs_volumes_mounted":
			m.mounted = v
		case strings.HasPrefix(name, "secretfs_provider_fetches_total{"):
			if _, p, ok := strings.Cut(name, `provider="`); ok {
				p, _, _ = strings.Cut(p, `"`)
				m.fetches[p] += v
			}
		}
	}
	return m
}

// auditedReadsByNode counts the audit events of gets, lists and watches of
// Secret ns/name by "<node> <user> <verb> <code>", the node found from the
// request's source address (byIP; "other:<ip>" for any other address).
func auditedReadsByNode(t *testing.T, path, ns, name string, byIP map[string]string) map[string]int {
	t.Helper()
	return auditedByNode(t, path, ns, name, byIP, "get", "list", "watch")
}

// auditedByNode is auditedReadsByNode of the given verbs.
func auditedByNode(t *testing.T, path, ns, name string, byIP map[string]string, verbs ...string) map[string]int {
	t.Helper()
	out := map[string]int{}
	eachAuditEvent(t, path, func(ev auditEvent) {
		r := ev.ObjectRef
		if ev.Stage != "ResponseComplete" && ev.Stage != "ResponseStarted" || !slices.Contains(verbs, ev.Verb) ||
			r.Resource != "secrets" || r.Namespace != ns || (r.Name != name && r.Name != "") || ev.ResponseStatus == nil {
			return
		}
		node := "other:" + strings.Join(ev.SourceIPs, ",")
		if len(ev.SourceIPs) > 0 && byIP[ev.SourceIPs[0]] != "" {
			node = byIP[ev.SourceIPs[0]]
		}
		out[fmt.Sprintf("%s %s %s %d", node, ev.User.Username, ev.Verb, ev.ResponseStatus.Code)]++
	})
	return out
}
