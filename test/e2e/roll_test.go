//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	rollReplicas = 30
	rollTimeout  = 5 * time.Minute
	reportDir    = "/report"
)

// readReport is testapp readloop's report (test/testapp/readloop.go).
type readReport struct {
	Reads     int64            `json:"reads"`
	Bad       int64            `json:"bad"`
	Backwards int64            `json:"backwards"`
	MaxSeq    map[string]int64 `json:"maxSeq"`
	Errors    []string         `json:"errors"`
}

// checkedValue is a value readloop can check: "<seq>.<payload>.<hex
// sha256 of "<seq>.<payload>">".
func checkedValue(seq int64, payload string) string {
	body := strconv.FormatInt(seq, 10) + "." + payload
	sum := sha256.Sum256([]byte(body))
	return body + "." + hex.EncodeToString(sum[:])
}

// The driver DaemonSet is rolled (its pod template changed) while 30 pods
// across the nodes hold volumes of the kubernetes backend, the Secret
// changes every second (rotation by watch and by the 5 s interval), and
// a reader in every pod reads both files every 20 ms, each value carrying
// its own checksum: no read finds a file missing, torn or older than the
// one before; every new driver adopts its node's volumes (its log and its
// volumes_mounted) and keeps rotating them (every pod sees the value written
// after the roll); deleting the pods afterwards leaves no mount, cache
// entry, watch or file of the values on any node.
func TestDriverRollUnderLoad(t *testing.T) {
	ctx := context.Background()
	nodes := readyNodes(t)
	auditPath := auditLogPath(t)
	ns := newNamespace(t)
	marker := "roll-" + randHex(6)
	var seq int64
	next := func() map[string][]byte {
		seq++
		return map[string][]byte{
			"password": []byte(checkedValue(seq, marker+"-"+randHex(16))),
			"token":    []byte(checkedValue(seq, marker+"-"+randHex(32))),
		}
	}
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Data: next()},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createServiceAccount(t, ns, "reader")
	grantSecret(t, ns, "reader", "db", "get", "watch")
	createClass(t, ns, "db", "kubernetes", map[string]any{"objects": "- {secretName: db, key: password}\n- {secretName: db, key: token}\n"})

	oldDrivers := map[string]*corev1.Pod{}
	for _, n := range nodes {
		oldDrivers[n] = driverPod(t, n)
	}
	created := time.Now()
	pods := readerDeployment(t, ns, "readers", len(nodes))
	t.Logf("%d reader pods Ready %v after the Deployment was created", len(pods), time.Since(created).Round(100*time.Millisecond))
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Spec.NodeName]++
	}
	t.Logf("%d reader pods by node: %v", len(pods), perNode)

	// The Secret changes every second until the roll is over: the
	// --min-rotation-interval of the e2e overlay. (A volume keeps its
	// previous generation until the next change, so a reader stalled in the
	// middle of an open across two changes could still find a file gone: at
	// two changes a second, 1 read of 54360 did so with 30 readers on one
	// node of a 2-core machine.)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErrs []error
	update := func() error {
		_, err := client.CoreV1().Secrets(ns).Update(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db"}, Data: next()},
			metav1.UpdateOptions{})
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if err := update(); err != nil && len(writeErrs) < 5 {
					writeErrs = append(writeErrs, err)
				}
			}
		}
	}()
	stopWriter := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopWriter)
	time.Sleep(2 * time.Second) // a few rotations before the roll
	before := readReports(t, pods)

	// The roll: a changed environment variable in the driver's template
	// (nothing reads it; it stays, so a later test needs no second roll).
	start := time.Now()
	patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"driver","env":[{"name":"E2E_ROLL","value":%q}]}]}}}}`, randHex(4))
	dsc := client.AppsV1().DaemonSets(driverNamespace)
	if _, err := dsc.Patch(ctx, "secretfs-node", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := poll(rollTimeout, func() (bool, error) {
		d, err := dsc.Get(ctx, "secretfs-node", metav1.GetOptions{})
		return err == nil && rolledOut(d), nil
	}); err != nil {
		t.Fatalf("the driver DaemonSet did not roll out within %v", rollTimeout)
	}
	rolled := time.Since(start)
	newDrivers := map[string]*corev1.Pod{}
	for _, n := range nodes {
		newDrivers[n] = driverPod(t, n)
		if newDrivers[n].UID == oldDrivers[n].UID {
			t.Fatalf("node %s still runs driver pod %s after the roll", n, oldDrivers[n].Name)
		}
	}
	during := readReports(t, pods)

	// Every new driver adopted its node's volumes: its log says so, its
	// gauge counts them.
	for _, n := range nodes {
		d := newDrivers[n]
		recovered := recoveredVolumes(t, d)
		m := scrapeDriver(t, d)
		t.Logf("node %s: new driver %s recovered %d volumes, volumes_mounted %v", n, d.Name, recovered, m.mounted)
		if recovered != perNode[n] || m.mounted != float64(perNode[n]) {
			t.Errorf("node %s: new driver recovered %d volumes, mounts %v; the node has %d reader pods", n, recovered, m.mounted, perNode[n])
		}
	}

	// The new drivers rotate every volume: one more value, seen by all.
	stopWriter()
	if len(writeErrs) > 0 {
		t.Fatalf("updating the Secret: %v", writeErrs)
	}
	if err := update(); err != nil {
		t.Fatal(err)
	}
	final := seq
	rotationStart := time.Now()
	var after map[string]readReport
	if err := poll(rotationTimeout, func() (bool, error) {
		after = readReports(t, pods)
		for _, r := range after {
			if r.MaxSeq["password"] < final || r.MaxSeq["token"] < final {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("not every pod saw value %d within %v after the roll: %v", final, rotationTimeout, after)
	}
	t.Logf("every pod saw the value written after the roll %v after it was written", time.Since(rotationStart).Round(100*time.Millisecond))

	var reads, readsDuring, bad, backwards int64
	for _, p := range pods {
		r := after[p.Name]
		reads += r.Reads
		readsDuring += during[p.Name].Reads - before[p.Name].Reads
		bad += r.Bad
		backwards += r.Backwards
		if r.Bad != 0 || r.Backwards != 0 || r.Reads == 0 {
			t.Errorf("pod %s on %s: %d reads, %d bad, %d backwards: %v", p.Name, p.Spec.NodeName, r.Reads, r.Bad, r.Backwards, r.Errors)
		}
		cur, err := client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || cur.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("pod %s restarted (or: %v): its reader's counts would start again", p.Name, err)
		}
	}
	t.Logf("roll of %d driver pods took %v with %d volumes mounted; %d values written; reads: %d in all, %d during the roll, %d bad, %d backwards",
		len(nodes), rolled.Round(100*time.Millisecond), len(pods), seq, reads, readsDuring, bad, backwards)

	// Unpublish after the roll leaves nothing behind.
	deleted := time.Now()
	bg := metav1.DeletePropagationForeground
	if err := client.AppsV1().Deployments(ns).Delete(ctx, "readers", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Fatal(err)
	}
	waitPods(t, ns, "app=readers", 0)
	for _, n := range nodes {
		var mounts []mount
		var files []string
		var m driverMetrics
		err := poll(cleanupTimeout, func() (bool, error) {
			mounts = slices.DeleteFunc(nodeMounts(t, n, "kubernetes.io~csi"), func(m mount) bool {
				return !slices.ContainsFunc(pods, func(p *corev1.Pod) bool { return strings.Contains(m.Path, string(p.UID)) })
			})
			helper(t, n, &files, "find", helperKubelet, marker)
			m = scrapeDriver(t, newDrivers[n])
			return len(mounts) == 0 && len(files) == 0 && m.mounted == 0 && m.cacheEntries == 0, nil
		})
		if err != nil {
			t.Errorf("node %s after the pods were deleted: mounts %+v, files with a value %q, volumes_mounted %v, cache entries %v",
				n, mounts, files, m.mounted, m.cacheEntries)
		}
	}
	if !t.Failed() {
		t.Logf("%v after the pods were deleted no node holds a mount, file, volume or cache entry of theirs", time.Since(deleted).Round(100*time.Millisecond))
	}
	// The new drivers must have closed every watch of the deleted pods.
	// An old driver's watch is told apart by when it started: before its
	// node's new driver pod existed (its creation time is in seconds; the
	// new driver's process starts well over a second after it). Its process
	// is gone with its pod (the roll checked), so a watch of it the audit log
	// still shows open is a stream its pod's end cut without the API server
	// seeing it close, not something left on the node.
	ipNode := map[string]string{}
	for _, n := range nodes {
		ipNode[oldDrivers[n].Status.PodIP] = n
		ipNode[newDrivers[n].Status.PodIP] = n
	}
	var newOpen, oldOpen []string
	if err := poll(time.Minute, func() (bool, error) {
		newOpen, oldOpen = nil, nil
		for _, w := range openWatchList(t, auditPath, ns, "db") {
			n := ipNode[w.SourceIP]
			desc := fmt.Sprintf("%s from %s (%s) as %s, received %v after the roll started and %v after the pods were deleted: %s",
				w.AuditID, n, w.SourceIP, w.User, w.Received.Sub(start).Round(100*time.Millisecond),
				w.Received.Sub(deleted).Round(100*time.Millisecond), w.URI)
			if n != "" && w.Received.Before(newDrivers[n].CreationTimestamp.Add(time.Second)) {
				oldOpen = append(oldOpen, desc)
			} else {
				newOpen = append(newOpen, desc)
			}
		}
		return len(newOpen) == 0 && len(oldOpen) == 0, nil
	}); err != nil {
		for _, w := range newOpen {
			t.Errorf("a watch of the Secret is open a minute after the pods were deleted: %s", w)
		}
		for _, w := range oldOpen {
			t.Logf("the API server still counts an old driver's watch open: %s", w)
		}
	}
}

// readerDeployment runs rollReplicas pods of service account reader
// mounting class db, spread evenly over n nodes, each running testapp
// readloop on the volume's files password and token; it returns them Ready.
func readerDeployment(t *testing.T, ns, name string, n int) []*corev1.Pod {
	t.Helper()
	replicas := int32(rollReplicas)
	labels := map[string]string{"app": name}
	spec := podSpec("reader", "db")
	spec.Containers[0].Command = []string{"/testapp", "readloop", reportDir + "/reads.json", mountPath, "password", "token"}
	spec.Containers[0].VolumeMounts = append(spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "report", MountPath: reportDir})
	spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "report", VolumeSource: corev1.VolumeSource{
		EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}})
	spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
		WhenUnsatisfiable: corev1.DoNotSchedule, LabelSelector: &metav1.LabelSelector{MatchLabels: labels}}}
	if _, err := client.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []*corev1.Pod
	if err := poll(rollTimeout, func() (bool, error) {
		list, err := client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, nil
		}
		pods = pods[:0]
		for i := range list.Items {
			for _, c := range list.Items[i].Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					pods = append(pods, &list.Items[i])
				}
			}
		}
		return len(pods) == rollReplicas, nil
	}); err != nil {
		t.Fatalf("%d of %d reader pods Ready after %v", len(pods), rollReplicas, rollTimeout)
	}
	return pods
}

// readReports reads every pod's readloop report, by pod name, ten pods at
// a time.
func readReports(t *testing.T, pods []*corev1.Pod) map[string]readReport {
	t.Helper()
	var mu sync.Mutex
	out := map[string]readReport{}
	var g errgroup.Group
	g.SetLimit(10)
	for _, p := range pods {
		g.Go(func() error {
			// cat, not dump: the report directory also holds readloop's
			// temporary files, which come and go.
			stdout, err := execIn(context.Background(), p.Namespace, p.Name, "app", "/testapp", "cat", reportDir+"/reads.json")
			if err != nil {
				return err
			}
			var raw struct{ Base64 string }
			if err := json.Unmarshal([]byte(stdout), &raw); err != nil {
				return fmt.Errorf("pod %s: testapp cat printed %q: %w", p.Name, stdout, err)
			}
			data, err := base64.StdEncoding.DecodeString(raw.Base64)
			if err != nil {
				return fmt.Errorf("pod %s: %w", p.Name, err)
			}
			var r readReport
			if err := json.Unmarshal(data, &r); err != nil {
				return fmt.Errorf("pod %s: report %q: %w", p.Name, data, err)
			}
			mu.Lock()
			out[p.Name] = r
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return out
}

var recoveredRE = regexp.MustCompile(`recovered mounted volumes"? volumes=(\d+)`)

// recoveredVolumes is the number of volumes the driver pod's log says it
// found mounted and adopted when it started (0 without such a line).
func recoveredVolumes(t *testing.T, d *corev1.Pod) int {
	t.Helper()
	log, err := client.CoreV1().Pods(d.Namespace).GetLogs(d.Name, &corev1.PodLogOptions{Container: "driver"}).DoRaw(context.Background())
	if err != nil {
		t.Fatalf("log of driver pod %s: %v", d.Name, err)
	}
	m := recoveredRE.FindSubmatch(log)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
