package events

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	testclock "k8s.io/utils/clock/testing"
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
// minutes, the rest go to one combined event whose count and message are
// patched; after the window, messages post on their own again.
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
	// A message seen before the group filled also goes to the combined one.
	r.Warning(pod, "Failed", "attempt 0 failed")
	waitCounts(t, sink, aggregateMax+1, 3)

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
	if n := len(r.poster.queue); n != queueLength {
		t.Errorf("queue holds %d events, want %d (the rest dropped)", n, queueLength)
	}
	close(stuck)
	r.Close()
	r.Close() // twice is fine
}
