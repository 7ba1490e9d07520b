package events

// The event poster against a hostile tenant (one who can create pods and
// SecretProviderClasses in its own namespace): each test is an attack, and
// says what it did to the poster before it was fixed, if anything.

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/clock"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// gatedAPI answers every request after gate is open (or its ctx ends), with
// an optional delay per request, and records what it created per namespace.
type gatedAPI struct {
	gate     chan struct{}
	delay    time.Duration
	honorCtx bool

	mu      sync.Mutex
	created map[string][]*corev1.Event // namespace -> events
	when    map[string]time.Time       // namespace/reason -> time created
	names   map[string]bool            // namespace/name
	n       atomic.Int64
	dups    atomic.Int64 // creates refused as AlreadyExists
}

func newGatedAPI() *gatedAPI {
	return &gatedAPI{gate: make(chan struct{}), created: map[string][]*corev1.Event{},
		when: map[string]time.Time{}, names: map[string]bool{}}
}

func (g *gatedAPI) Events(ns string) kubecore.EventInterface { return gatedNS{g, ns} }

type gatedNS struct {
	g  *gatedAPI
	ns string
}

func (n gatedNS) wait(ctx context.Context) error {
	if n.g.honorCtx {
		select {
		case <-n.g.gate:
		case <-ctx.Done():
			return apierrors.NewTimeoutError("context done", 1)
		}
	} else {
		<-n.g.gate
	}
	if n.g.delay > 0 {
		time.Sleep(n.g.delay)
	}
	return nil
}

func (n gatedNS) Create(ctx context.Context, e *corev1.Event, _ metav1.CreateOptions) (*corev1.Event, error) {
	n.g.n.Add(1)
	if err := n.wait(ctx); err != nil {
		return nil, err
	}
	g := n.g
	g.mu.Lock()
	defer g.mu.Unlock()
	// What the API server would refuse.
	if errs := validation.IsDNS1123Subdomain(e.Name); len(errs) > 0 {
		return nil, apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Event").GroupKind(), e.Name, nil)
	}
	if g.names[n.ns+"/"+e.Name] {
		g.dups.Add(1)
		return nil, apierrors.NewAlreadyExists(corev1.Resource("events"), e.Name)
	}
	g.names[n.ns+"/"+e.Name] = true
	g.created[n.ns] = append(g.created[n.ns], e.DeepCopy())
	if _, ok := g.when[n.ns+"/"+e.Reason]; !ok {
		g.when[n.ns+"/"+e.Reason] = time.Now()
	}
	return e, nil
}

func (n gatedNS) Patch(ctx context.Context, name string, _ types.PatchType, _ []byte, _ metav1.PatchOptions, _ ...string) (*corev1.Event, error) {
	n.g.n.Add(1)
	if err := n.wait(ctx); err != nil {
		return nil, err
	}
	return &corev1.Event{}, nil
}

func (g *gatedAPI) createdIn(ns string) []*corev1.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*corev1.Event(nil), g.created[ns]...)
}

func tenantPod(ns string, i int) provider.Pod {
	return provider.Pod{Namespace: ns, Name: fmt.Sprintf("evil-%d", i), UID: fmt.Sprintf("uid-%s-%d", ns, i), ServiceAccount: "default"}
}

// One tenant's events do not crowd out another namespace's. 41 tenant pods
// each stay inside their spam budget (25 events: a pod with 25 volumes whose
// class has ignored fields, or refresh failures of 25 volumes) while the API
// answers the first request. With one queue of 1000 for the node, as
// client-go's, they filled it and the victim namespace's Warning that came
// next was dropped; now a namespace queues at most perNamespace events.
func TestTenantFloodDoesNotDropOtherNamespacesEvents(t *testing.T) {
	api := newGatedAPI()
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	r.poster.retry = time.Millisecond
	defer r.Close()

	pods := queueLength/spamBurst + 1
	for i := range pods {
		p := tenantPod("evil", i)
		for v := range spamBurst {
			r.Warning(p, "SecretProviderClassIgnored", fmt.Sprintf("volume %d: class has fields the driver ignores", v))
		}
	}
	victim := provider.Pod{Namespace: "bank", Name: "payments-0", UID: "uid-bank-0"}
	r.RefreshFailed(victim, "db-creds", provider.PermissionDenied("vault: permission denied"))
	close(api.gate) // the API answers at once from now on

	deadline := time.Now().Add(10 * time.Second)
	for len(api.createdIn("bank")) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	evil, bank := len(api.createdIn("evil")), len(api.createdIn("bank"))
	reqs := api.n.Load()
	t.Logf("tenant raised %d events from %d pods (none over its spam budget): %d API requests (%d creates, the rest count patches of combined events), %d creates for the victim namespace",
		pods*spamBurst, pods, reqs, evil, bank)
	t.Logf("at client-go's default 5 requests/s those %d requests keep the poster busy for %v", reqs, time.Duration(reqs)*200*time.Millisecond)
	if bank == 0 {
		t.Errorf("the victim namespace's Warning %s was dropped: one tenant's events filled the node-wide queue of %d (%d requests)",
			ReasonRefreshFailed, queueLength, reqs)
	}
}

// Nor do they delay it: namespaces take turns. With one queue the victim's
// Warning waited behind every event the tenant queued (2.2 s here with an
// API answering in 2 ms; 3 minutes at client-go's default 5 requests/s).
func TestTenantFloodDoesNotDelayOtherNamespacesEvents(t *testing.T) {
	api := newGatedAPI()
	api.delay = 2 * time.Millisecond
	close(api.gate)
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	r.poster.retry = time.Millisecond
	defer r.Close()

	n := 0
	for i := 0; n < queueLength-50; i++ {
		p := tenantPod("evil", i)
		for v := range spamBurst {
			r.Warning(p, "SecretProviderClassIgnored", fmt.Sprintf("volume %d", v))
			n++
		}
	}
	start := time.Now()
	victim := provider.Pod{Namespace: "bank", Name: "payments-0", UID: "uid-bank-0"}
	r.RefreshFailed(victim, "db-creds", provider.PermissionDenied("vault: permission denied"))
	deadline := time.Now().Add(30 * time.Second)
	for len(api.createdIn("bank")) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	api.mu.Lock()
	delay := api.when["bank/"+ReasonRefreshFailed].Sub(start)
	api.mu.Unlock()
	perRequest := 200 * time.Millisecond // client-go's default QPS of 5
	t.Logf("victim's Warning posted %v after it was raised, behind %d tenant events at 2 ms each; at 5 requests/s: %v",
		delay.Round(time.Millisecond), n, time.Duration(n)*perRequest)
	if delay > time.Second {
		t.Errorf("the victim namespace's Warning waited %v behind %d events of another tenant (%v at 5 requests/s)",
			delay.Round(time.Millisecond), n, time.Duration(n)*perRequest)
	}
}

// A pod name is a DNS subdomain of up to 253 bytes; the event name is the
// pod name, "." and the time in hex. Past 236 bytes that was longer than
// the API server accepts, and every event about the pod was refused as
// Invalid; the name part is cut now.
func TestLongPodNameGetsEvents(t *testing.T) {
	api := newGatedAPI()
	close(api.gate)
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	defer r.Close()
	name := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		t.Fatalf("pod name not valid: %v", errs)
	}
	p := provider.Pod{Namespace: "team-a", Name: name, UID: "uid-long"}
	r.RefreshFailed(p, "app", provider.Unavailable("vault down"))
	marker := provider.Pod{Namespace: "team-a", Name: "marker", UID: "uid-m"}
	r.Warning(marker, "Marker", "m")
	deadline := time.Now().Add(5 * time.Second)
	for api.n.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	got := 0
	for _, e := range api.createdIn("team-a") {
		if e.InvolvedObject.Name == name {
			got++
		}
	}
	t.Logf("pod name of %d bytes: event name of %d bytes; events created for it: %d", len(name), len(name)+17, got)
	if got == 0 {
		t.Errorf("a pod named with %d bytes (valid) gets no events: the event name has %d bytes, over %d",
			len(name), len(name)+17, validation.DNS1123SubdomainMaxLength)
	}
}

// Close ends the request in flight: it waited up to requestTimeout (10 s)
// for an API server that does not answer.
func TestCloseEndsTheRequestInFlight(t *testing.T) {
	api := newGatedAPI()
	api.honorCtx = true
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	r.Warning(pod, "Failed", "m")
	for api.n.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	r.Close()
	d := time.Since(start)
	t.Logf("Close returned after %v with a request in flight", d.Round(time.Millisecond))
	if d > time.Second {
		t.Errorf("Close took %v: it waits for the request in flight (requestTimeout %v) instead of cancelling it", d.Round(time.Millisecond), requestTimeout)
	}
}

// Memory with everything at its maximum: a stuck API server, the node's
// queue full of 1 KiB messages on 253-byte pod names in 63-byte
// namespaces, and every cache full of such names.
func TestMemoryAtMaximum(t *testing.T) {
	longNS := strings.Repeat("n", 63)
	longName := func(i int) string { return fmt.Sprintf("%s-%08d", strings.Repeat("p", 236-9), i) }
	msg := strings.Repeat("x", MaxMessage-30)

	var before, mid, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	api := newGatedAPI() // stuck
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	for i := range 10 * queueLength {
		ns := fmt.Sprintf("%s%03d", longNS[:60], i%(queueLength/perNamespace+1))
		r.Warning(provider.Pod{Namespace: ns, Name: longName(i), UID: fmt.Sprintf("uid-%d", i)}, "R", fmt.Sprintf("%d %s", i, msg))
	}
	runtime.GC()
	runtime.ReadMemStats(&mid)
	queued := int64(mid.HeapAlloc) - int64(before.HeapAlloc)
	r.poster.mu.Lock()
	length := r.poster.length
	r.poster.mu.Unlock()
	if length != queueLength {
		t.Errorf("%d events queued, want the node's %d", length, queueLength)
	}
	close(api.gate)
	r.Close()

	// Caches full: posted names of 253 bytes.
	cnt := &countingAPI{}
	p := newPoster(cnt, corev1.EventSource{Component: "csi.secretfs.dev", Host: "node-1"}, clock.RealClock{})
	p.close()
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 2 * cacheSize {
		ref := &corev1.ObjectReference{Kind: "Pod", Namespace: longNS, Name: longName(i), UID: types.UID(fmt.Sprintf("uid-%d", i))}
		for m := range aggregateMax + 1 {
			p.post(&corev1.Event{InvolvedObject: *ref, Type: "Warning", Reason: "R", Message: fmt.Sprintf("%d %s", m, msg),
				ObjectMeta: metav1.ObjectMeta{Name: longName(i) + ".0123456789abcdef", Namespace: longNS}}, digest(ref.Name))
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	cached := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("stuck API, %d events raised: queue holds %.2f MiB", 10*queueLength, float64(queued)/(1<<20))
	t.Logf("%d pods x %d messages with 253-byte names: caches hold %.2f MiB", 2*cacheSize, aggregateMax+1, float64(cached)/(1<<20))
	if queued > 4<<20 || cached > 8<<20 {
		t.Errorf("queue %.1f MiB, caches %.1f MiB", float64(queued)/(1<<20), float64(cached)/(1<<20))
	}
	runtime.KeepAlive(p)
}

// Raising an event never blocks and is cheap, with the API stuck and the
// queue full; there is one goroutine whatever the load. A 1 MiB error was
// formatted whole before the message was clipped (1.6 ms and 2 MiB
// allocated per call).
func TestEnqueueCostAndGoroutines(t *testing.T) {
	api := newGatedAPI()
	base := runtime.NumGoroutine()
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	class := strings.Repeat("c", 253)
	measure := func(errLen, n int) uint64 {
		err := provider.Unavailable("%s", strings.Repeat("e", errLen))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := range n {
			r.RefreshFailed(tenantPod("evil", i), class, err)
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / uint64(n)
	}
	perKiB := measure(4<<10, 20000) // the namespace's queue full after the first 100
	perMiB := measure(1<<20, 200)
	g := runtime.NumGoroutine() - base
	close(api.gate)
	r.Close()
	t.Logf("RefreshFailed with the API stuck and the queue full: %d bytes allocated per call with a 4 KiB error, %d with a 1 MiB error; %d goroutine(s) added", perKiB, perMiB, g)
	if perKiB > 16<<10 || perMiB > 16<<10 || g > 2 {
		t.Errorf("%d / %d bytes allocated per call, %d goroutines", perKiB, perMiB, g)
	}
}

// Events go only to the pod's own namespace, and a repeat in one namespace
// never patches an event of another (keys include the namespace,
// length-prefixed).
func TestNamespaceConfinement(t *testing.T) {
	sink := &recordingSink{}
	r, _ := newTestRecorder(t, sink)
	a := provider.Pod{Namespace: "a", Name: "b.c", UID: "x"}
	b := provider.Pod{Namespace: "a.b", Name: "c", UID: "x"}
	r.Warning(a, "R", "m")
	r.Warning(b, "R", "m")
	r.Warning(a, "R", "m")
	r.Warning(b, "R", "m")
	waitCounts(t, sink, 2, 2) // sinkNamespace refuses an event created in another namespace
	for _, e := range sink.patched {
		if e.Namespace != e.InvolvedObject.Namespace {
			t.Errorf("patched %s/%s about %s", e.Namespace, e.Name, e.InvolvedObject.Namespace)
		}
	}
}

// Races and Close: raising from many goroutines while closing, Close
// twice, raising after Close (which queued events that were never posted
// nor freed). Run with -race.
func TestConcurrentClose(t *testing.T) {
	api := newGatedAPI()
	close(api.gate)
	r := newWithAPI(api, clock.RealClock{}, Options{Component: "c", Host: "h", Rotated: true})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				p := tenantPod(fmt.Sprint("ns", g), i%50)
				r.Warning(p, "R", fmt.Sprint(i%13))
				r.Rotated(p, "c")
				r.ServedStale(p, "c", time.Second, provider.Unavailable("x"))
			}
		}()
	}
	time.Sleep(5 * time.Millisecond)
	r.Close()
	wg.Wait()
	r.Close()
	r.Warning(pod, "After", "close")
	r.poster.mu.Lock()
	defer r.poster.mu.Unlock()
	if r.poster.length != 0 || len(r.poster.queues) != 0 {
		t.Errorf("after Close %d events queued", r.poster.length)
	}
}

// A tenant who may delete the Events of its namespace makes every repeat
// cost two requests (a patch answered NotFound, then a create) instead of
// one; the pod's spam budget bounds them.
func TestDeletedEventsCostAtMostTwiceTheBudget(t *testing.T) {
	api := &countingAPI{}
	p := newPoster(deletingAPI{api}, corev1.EventSource{Component: "c", Host: "h"}, clock.RealClock{})
	ref := &corev1.ObjectReference{Kind: "Pod", Namespace: "evil", Name: "e", UID: "u"}
	for range 100 {
		p.enqueue(ref, "Warning", "R", "same")
		time.Sleep(100 * time.Microsecond)
	}
	deadline := time.Now().Add(5 * time.Second)
	for api.n.Load() < 2*spamBurst-1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	p.close()
	t.Logf("100 repeats of one event on one pod, each deleted at once by the tenant: %d requests (spam budget %d events)", api.n.Load(), spamBurst)
	if api.n.Load() > 2*spamBurst {
		t.Errorf("%d requests", api.n.Load())
	}
}

// deletingAPI answers every patch NotFound: the tenant deleted the event.
type deletingAPI struct{ *countingAPI }

func (d deletingAPI) Events(string) kubecore.EventInterface { return d }

func (d deletingAPI) Patch(context.Context, string, types.PatchType, []byte, metav1.PatchOptions, ...string) (*corev1.Event, error) {
	d.n.Add(1)
	return nil, apierrors.NewNotFound(corev1.Resource("events"), "x")
}
