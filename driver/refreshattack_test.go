package driver

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// A tenant with many classes, each with a volume on this node, asks for a
// refresh of every one twice (the second waits out the gap): it gets one
// backend call per class and request that is not folded, one goroutine per
// waiting class, and no more slots than its namespace's share, so another
// tenant's request is still scheduled.
func TestOneTenantCannotFillTheRefreshQueue(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = time.Hour })
	const n = maxPendingRefreshes
	for i := range n {
		name := fmt.Sprint("c", i)
		e.classes["team-a/"+name] = &class.Class{Name: name, Namespace: "team-a", Provider: "test", Parameters: map[string]string{"objects": "a", "value": name}}
		if _, err := e.node.NodePublishVolume(t.Context(), publishReq(name, e.target(name), name, "team-a")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.node.NodePublishVolume(t.Context(), publishReq("b1", e.target("b1"), "other", "team-b")); err != nil {
		t.Fatal(err)
	}
	calls := e.prov.callCount()
	for i := range n { // runs now
		if _, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Class: fmt.Sprint("c", i)}, RequestedByAnnotation); err != nil {
			t.Fatalf("first request for c%d: %v", i, err)
		}
		if i%100 == 99 { // these hold a slot until they end
			waitFor(t, "the first requested refreshes", func() bool { return requestedRefreshes(t, e) == float64(i+1) })
		}
	}
	waitFor(t, "the first requested refreshes", func() bool { return requestedRefreshes(t, e) == n })
	base := runtime.NumGoroutine()
	var accepted, refused int
	for i := range n { // waits an hour
		_, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Class: fmt.Sprint("c", i)}, RequestedByAnnotation)
		switch {
		case err == nil:
			accepted++
		case provider.CodeOf(err) == codes.ResourceExhausted:
			refused++
		default:
			t.Fatalf("second request for c%d: %v", i, err)
		}
	}
	goroutines := runtime.NumGoroutine() - base
	t.Logf("team-a: %d classes, %d waiting requests accepted, %d refused, %d goroutines more, %d backend calls",
		n, accepted, refused, goroutines, e.prov.callCount()-calls)
	if accepted != maxPendingPerNamespace || refused != n-maxPendingPerNamespace {
		t.Errorf("team-a: %d waiting requests accepted, %d refused; want %d accepted", accepted, refused, maxPendingPerNamespace)
	}
	if goroutines > accepted+10 {
		t.Errorf("%d goroutines for %d waiting requests", goroutines, accepted)
	}
	if got := e.prov.callCount() - calls; got != n {
		t.Errorf("backend calls: %d, want %d (one per class that was refreshed)", got, n)
	}
	if _, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-b", Class: "other"}, RequestedByAnnotation); err != nil {
		t.Errorf("another tenant's request: %v", err)
	}
	waitFor(t, "team-b's requested refresh", func() bool { return requestedRefreshes(t, e) == n+1 })
	start := time.Now()
	if _, err := e.node.NodePublishVolume(t.Context(), publishReq("b2", e.target("b2"), "other", "team-b")); err != nil {
		t.Errorf("another tenant's publish: %v", err)
	}
	t.Logf("another tenant's publish with %d of team-a's refreshes waiting: %v", accepted, time.Since(start))
}

// A tenant changes a class's refresh annotation 100 times within the gap:
// two refreshes (the first, and one at the gap's end), and the driver logs
// at Info or above only when it schedules one, not once per change.
func TestAnnotationFlipsLogOncePerScheduledRefresh(t *testing.T) {
	const gap = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = gap })
	if err := e.publish("a1", e.target("a1")); err != nil {
		t.Fatal(err)
	}
	calls := e.prov.callCount()
	e.d.classRefreshRequested("team-a", "app")
	waitFor(t, "the first requested refresh", func() bool { return requestedRefreshes(t, e) == 1 })
	for range 100 {
		e.d.classRefreshRequested("team-a", "app")
	}
	waitFor(t, "the second requested refresh", func() bool { return requestedRefreshes(t, e) == 2 })
	time.Sleep(2 * gap) // nothing else is pending
	if got := requestedRefreshes(t, e); got != 2 {
		t.Errorf("requested refreshes: %v, want 2", got)
	}
	if got := e.prov.callCount() - calls; got != 2 {
		t.Errorf("backend calls: %d, want 2", got)
	}
	lines := strings.Count(e.logs.String(), `"msg":"refresh requested by class annotation"`)
	t.Logf("101 annotation changes: %d Info lines, %d backend calls", lines, e.prov.callCount()-calls)
	if lines != 2 {
		t.Errorf("%d Info lines for 101 annotation changes and 2 scheduled refreshes", lines)
	}
}

// A class of the same name in another namespace, or a pod of the same name
// there, selects none of this namespace's volumes.
func TestRequestedRefreshStaysInItsNamespace(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = time.Hour })
	e.classes["team-b/app"] = &class.Class{Name: "app", Namespace: "team-b", Provider: "test", Parameters: map[string]string{"objects": "x"}}
	if err := e.publish("a1", e.target("a1")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.node.NodePublishVolume(t.Context(), publishReq("b1", e.target("b1"), "other", "team-b")); err != nil {
		t.Fatal(err)
	}
	if n, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-b", Class: "app"}, RequestedByAnnotation); n != 0 || err != nil {
		t.Errorf("class app of team-b selects %d volumes (%v), want 0", n, err)
	}
	// Both volumes belong to pods named web-0.
	if n, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-b", Pod: "web-0"}, RequestedByCommand); n != 1 || err != nil {
		t.Fatalf("pod web-0 of team-b selects %d volumes (%v), want 1", n, err)
	}
	waitFor(t, "the requested refresh", func() bool { return requestedRefreshes(t, e) == 1 })
	for _, s := range e.d.Status() {
		if got := !s.LastRequestedRefresh.IsZero(); got != (s.Namespace == "team-b") {
			t.Errorf("%s of %s refreshed on request: %v", s.VolumeID, s.Namespace, got)
		}
	}
}

// A requested refresh stuck in its backend does not hold up the volume's
// unpublish: the unpublish cancels it.
func TestUnpublishCancelsARequestedRefresh(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.publish("a1", e.target("a1")); err != nil {
		t.Fatal(err)
	}
	block := make(chan struct{})
	defer close(block)
	e.prov.set(func(p *testProvider) { p.block = block })
	if _, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Class: "app"}, RequestedByAnnotation); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the requested refresh to hold the volume", func() bool {
		e.d.locks.mu.Lock()
		defer e.d.locks.mu.Unlock()
		l := e.d.locks.held["a1"]
		return l != nil && l.cancel != nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "a1", TargetPath: e.target("a1")}); err != nil {
		t.Fatalf("unpublish during a stuck requested refresh: %v", err)
	}
	waitFor(t, "the cancelled refresh", func() bool { return requestedRefreshes(t, e) == 1 })
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// Stopping the driver ends the goroutines of refreshes waiting out a gap.
func TestShutdownEndsWaitingRequestedRefreshes(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = time.Hour })
	const n = 50
	for i := range n { // before any refresh reads the map
		name := fmt.Sprint("c", i)
		e.classes["team-a/"+name] = &class.Class{Name: name, Namespace: "team-a", Provider: "test", Parameters: map[string]string{"objects": "a"}}
	}
	for i := range n {
		name := fmt.Sprint("c", i)
		if _, err := e.node.NodePublishVolume(t.Context(), publishReq(name, e.target(name), name, "team-a")); err != nil {
			t.Fatal(err)
		}
		if _, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Class: name}, RequestedByAnnotation); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the first requested refreshes", func() bool { return requestedRefreshes(t, e) == n })
	for i := range n {
		if _, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Class: fmt.Sprint("c", i)}, RequestedByAnnotation); err != nil {
			t.Fatal(err)
		}
	}
	before := runtime.NumGoroutine()
	e.stop()
	waitFor(t, "no refresh waiting", func() bool {
		e.d.requested.mu.Lock()
		defer e.d.requested.mu.Unlock()
		return len(e.d.requested.pending) == 0 && len(e.d.requested.perNS) == 0
	})
	t.Logf("%d refreshes waiting: %d goroutines before the stop, %d after", n, before, runtime.NumGoroutine())
	if got := requestedRefreshes(t, e); got != n {
		t.Errorf("requested refreshes: %v, want %d (none of the waiting ones ran)", got, n)
	}
}

// A class deleted while a refresh of it waits: the refresh fails with
// NotFound, the volume keeps its files, and the waiting slot is freed.
func TestRequestedRefreshOfADeletedClass(t *testing.T) {
	const gap = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = gap })
	if err := e.publish("a1", e.target("a1")); err != nil {
		t.Fatal(err)
	}
	before := readFile(t, e.target("a1")+"/a")
	target := RefreshTarget{Namespace: "team-a", Class: "app"}
	for i := range 2 { // the first runs at once, the second waits out the gap
		if _, err := e.d.RequestRefresh(target, RequestedByAnnotation); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			waitFor(t, "the first requested refresh", func() bool { return requestedRefreshes(t, e) == 1 })
		}
	}
	delete(e.classes, "team-a/app")
	waitFor(t, "two requested refreshes", func() bool { return requestedRefreshes(t, e) == 2 })
	if got := readFile(t, e.target("a1")+"/a"); got != before {
		t.Errorf("files after the failed refresh: %q, want %q", got, before)
	}
	if s := e.d.Status()[0]; !strings.Contains(s.LastError, "not found") {
		t.Errorf("status: %+v", s)
	}
	e.d.requested.mu.Lock()
	defer e.d.requested.mu.Unlock()
	if len(e.d.requested.pending) != 0 || len(e.d.requested.perNS) != 0 {
		t.Errorf("slots held: %v %v", e.d.requested.pending, e.d.requested.perNS)
	}
}

// A tenant whose backend hangs (its own class's latency) keeps asking for a
// refresh, once per gap: the requests made while a refresh of the class
// runs fold into one more, run by the same goroutine after it, instead of
// a new goroutine per gap queueing on the volume's lock.
func TestRequestsDuringAStuckRefreshFoldIntoOne(t *testing.T) {
	const gap = 50 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = gap })
	for _, id := range []string{"a1", "a2"} {
		if err := e.publish(id, e.target(id)); err != nil {
			t.Fatal(err)
		}
	}
	calls := e.prov.callCount()
	block := make(chan struct{})
	e.prov.set(func(p *testProvider) { p.block = block })
	target := RefreshTarget{Namespace: "team-a", Class: "app"}
	base := runtime.NumGoroutine()
	const rounds = 20
	for range rounds {
		if _, err := e.d.RequestRefresh(target, RequestedByAnnotation); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * gap) // past the gap: each is a new request
	}
	goroutines := runtime.NumGoroutine() - base
	e.prov.set(func(p *testProvider) { p.block = nil })
	close(block)
	waitFor(t, "no refresh waiting or running", func() bool {
		e.d.requested.mu.Lock()
		defer e.d.requested.mu.Unlock()
		return len(e.d.requested.pending) == 0
	})
	waitFor(t, "the refreshes to end", func() bool { return runtime.NumGoroutine() <= base })
	got := e.prov.callCount() - calls
	t.Logf("%d requests while the backend hung: %d goroutines more, then %d backend calls", rounds, goroutines, got)
	if goroutines > 3 {
		t.Errorf("%d goroutines more for %d requests of one class", goroutines, rounds)
	}
	if got != 2 { // the stuck refresh and the one folded after it; the second volume shares each answer (node cache)
		t.Errorf("backend calls: %d, want 2", got)
	}
}
