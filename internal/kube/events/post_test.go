package events

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	testclock "k8s.io/utils/clock/testing"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
)

func newTestRecorder(t *testing.T, sink *recordingSink) (*Recorder, *testclock.FakeClock) {
	t.Helper()
	clk := testclock.NewFakeClock(time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC))
	r := newWithAPI(sink, clk, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	r.poster.retry = time.Millisecond
	t.Cleanup(r.Close)
	return r, clk
}

// A pod gets spamBurst events, then one every five minutes, as client-go's
// spam filter allows; another pod has a budget of its own.
func TestEventsPerPodAreRateLimited(t *testing.T) {
	sink := &recordingSink{}
	r, clk := newTestRecorder(t, sink)
	for i := range spamBurst + 5 {
		r.Warning(pod, fmt.Sprintf("Reason%d", i), "m") // distinct reasons: no aggregation, no count
	}
	other := pod
	other.Name, other.UID = "web-1", "0f1e2d3c-aaaa-bbbb-cccc-000000000002"
	r.Warning(other, "Reason0", "m")
	waitCounts(t, sink, spamBurst+1, 0)

	clk.Step(5 * time.Minute)
	r.Warning(pod, "Later", "m")
	r.Warning(pod, "Later2", "m") // the bucket had one token again, not two
	r.Warning(other, "Marker", "m")
	waitCounts(t, sink, spamBurst+3, 0)
	var later []string
	for _, e := range sink.created[spamBurst+1:] {
		later = append(later, e.InvolvedObject.Name+"/"+e.Reason)
	}
	if got := strings.Join(later, " "); got != "web-0/Later web-1/Marker" {
		t.Errorf("after five minutes posted %s, want web-0/Later web-1/Marker", got)
	}
}

// After aggregateMax different messages of one reason on a pod within ten
// minutes, other messages go to one combined event whose count and message
// are patched (the first ten's repeats count on their own events); after
// the window, messages post on their own again.
func TestSimilarEventsAreCombined(t *testing.T) {
	sink := &recordingSink{}
	r, clk := newTestRecorder(t, sink)
	for i := range aggregateMax + 3 {
		r.Warning(pod, "Failed", fmt.Sprintf("attempt %d failed", i))
	}
	waitCounts(t, sink, aggregateMax+1, 2)
	combined := sink.created[aggregateMax]
	if combined.Message != combinedPrefix+fmt.Sprintf("attempt %d failed", aggregateMax) {
		t.Errorf("combined event message %q", combined.Message)
	}
	last := sink.patched[1]
	if last.Name != combined.Name || last.Count != 3 || last.Message != combinedPrefix+fmt.Sprintf("attempt %d failed", aggregateMax+2) {
		t.Errorf("combined event patched to %s count %d %q", last.Name, last.Count, last.Message)
	}
	// A message seen before the group filled counts on its own event.
	r.Warning(pod, "Failed", "attempt 0 failed")
	waitCounts(t, sink, aggregateMax+1, 3)
	if p := sink.patched[2]; p.Name != sink.created[0].Name || p.Count != 2 || p.Message != "attempt 0 failed" {
		t.Errorf("a repeat of the first message patched %s count %d %q, want %s count 2", p.Name, p.Count, p.Message, sink.created[0].Name)
	}

	clk.Step(aggregateWindow + time.Second)
	r.Warning(pod, "Failed", "attempt 99 failed")
	waitCounts(t, sink, aggregateMax+2, 3)
	if got := sink.created[aggregateMax+1].Message; got != "attempt 99 failed" {
		t.Errorf("after the window: %q", got)
	}
}

// A repeated event whose object expired on the API server (events live an
// hour there) is created anew; a transient error is tried again; a refusal
// is not.
func TestEventPostingErrors(t *testing.T) {
	sink := &recordingSink{}
	r, _ := newTestRecorder(t, sink)
	r.Warning(pod, "Failed", "m")
	waitCounts(t, sink, 1, 0)

	sink.mu.Lock()
	sink.created = sink.created[:0] // the API server forgot it
	sink.mu.Unlock()
	r.Warning(pod, "Failed", "m")
	waitCounts(t, sink, 1, 0)
	if e := sink.created[0]; e.Count != 1 {
		t.Errorf("recreated with count %d", e.Count)
	}

	var calls atomic.Int32
	sink.mu.Lock()
	sink.fail = func(verb string) error {
		if verb == "create" && calls.Add(1) < tries {
			return apierrors.NewServiceUnavailable("etcd leader changed")
		}
		return nil
	}
	sink.mu.Unlock()
	r.Warning(pod, "Other", "m")
	waitCounts(t, sink, 2, 0)
	if n := calls.Load(); n != tries {
		t.Errorf("created after %d tries, want %d", n, tries)
	}

	calls.Store(0)
	sink.mu.Lock()
	sink.fail = func(verb string) error {
		calls.Add(1)
		return apierrors.NewForbidden(corev1.Resource("events"), "", errors.New("no RBAC"))
	}
	sink.mu.Unlock()
	r.Warning(pod, "Third", "m")
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // retries, if any, are 1 ms apart
	if n := calls.Load(); n != 1 {
		t.Errorf("a forbidden create was tried %d times, want 1", n)
	}
}

// Posting never blocks: with the API stuck, events beyond the queue are
// dropped and the caller returns at once.
func TestPostingNeverBlocks(t *testing.T) {
	stuck := make(chan struct{})
	sink := &recordingSink{fail: func(string) error { <-stuck; return nil }}
	r, _ := newTestRecorder(t, sink)
	start := time.Now()
	for i := range 3 * queueLength {
		other := pod
		other.Name = fmt.Sprintf("web-%d", i) // no pod's rate limit in the way
		r.Warning(other, "Failed", "m")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("posting %d events took %v", 3*queueLength, d)
	}
	r.poster.mu.Lock()
	n := r.poster.length
	r.poster.mu.Unlock()
	if n != perNamespace {
		t.Errorf("queue holds %d events, want %d, the namespace's (the rest dropped)", n, perNamespace)
	}
	close(stuck)
	r.Close()
	r.Close() // twice is fine
}

// countingAPI takes every event and keeps none.
type countingAPI struct{ n atomic.Int64 }

func (c *countingAPI) Events(string) kubecore.EventInterface { return c }

func (c *countingAPI) Create(_ context.Context, e *corev1.Event, _ metav1.CreateOptions) (*corev1.Event, error) {
	c.n.Add(1)
	return e, nil
}

func (c *countingAPI) Patch(context.Context, string, types.PatchType, []byte, metav1.PatchOptions, ...string) (*corev1.Event, error) {
	c.n.Add(1)
	return nil, nil
}

// What the poster remembers does not grow with the messages: pods whose
// refreshes fail with long messages that differ every time (a tenant
// chooses the object names an error quotes) fill every cache, and the
// caches hold digests. Keeping the messages themselves, as client-go's
// correlator does, held 10 x 1 KiB per pod and reason: 44 MiB here.
func TestPosterMemoryDoesNotGrowWithMessages(t *testing.T) {
	api := &countingAPI{}
	p := newPoster(api, corev1.EventSource{Component: "csi.secretfs.dev", Host: "node-1"}, clock.RealClock{})
	defer p.close()
	long := strings.Repeat("x", MaxMessage-20)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	pods := cacheSize
	for i := range pods {
		ref := &corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: "team-a",
			Name: fmt.Sprintf("web-%d", i), UID: types.UID(fmt.Sprintf("uid-%d", i))}
		for m := range aggregateMax + 1 {
			p.post(&corev1.Event{InvolvedObject: *ref, Type: corev1.EventTypeWarning, Reason: "Failed",
				Message: fmt.Sprintf("%d %s", m, long), ObjectMeta: metav1.ObjectMeta{Name: ref.Name + ".x", Namespace: "team-a"}}, digest(ref.Name))
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if n := api.n.Load(); n != int64(pods*(aggregateMax+1)) {
		t.Fatalf("%d requests, want %d", n, pods*(aggregateMax+1))
	}
	t.Logf("%d pods x %d messages of %d bytes: caches hold %.1f MiB", pods, aggregateMax+1, len(long), float64(grown)/(1<<20))
	if grown > 6<<20 {
		t.Errorf("the caches hold %.1f MiB after %d pods' events, want at most 6 MiB", float64(grown)/(1<<20), pods)
	}
	runtime.KeepAlive(p)
}
