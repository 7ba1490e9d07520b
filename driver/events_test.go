package driver

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
)

// fakeEvents is an EventSink that records what the driver reports.
type fakeEvents struct {
	mu      sync.Mutex
	failed  []sinkEvent
	rotated []sinkEvent
}

type sinkEvent struct {
	pod   provider.Pod
	class string
	err   error
}

func (f *fakeEvents) RefreshFailed(pod provider.Pod, class string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed = append(f.failed, sinkEvent{pod, class, err})
}

func (f *fakeEvents) Rotated(pod provider.Pod, class string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotated = append(f.rotated, sinkEvent{pod: pod, class: class})
}

func (f *fakeEvents) counts() (failed, rotated int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.failed), len(f.rotated)
}

// age moves a volume's clocks back by dt, as if dt had passed since its
// last fetch, attempt and event, without sleeping; the volume's node-cache
// entry is invalidated as if it had expired.
func (e *env) age(id string, dt time.Duration) {
	e.t.Helper()
	if !e.d.locks.Lock(id, nil) {
		e.t.Fatal("cannot lock volume")
	}
	defer e.d.locks.Unlock(id)
	v := e.d.volume(id)
	if v == nil {
		e.t.Fatalf("no volume %s", id)
	}
	if e.d.cache != nil {
		e.d.cache.Invalidate(id, time.Now())
	}
	v.lastFetch = v.lastFetch.Add(-dt)
	v.lastTry = v.lastTry.Add(-dt)
	if !v.lastFailEvent.IsZero() {
		v.lastFailEvent = v.lastFailEvent.Add(-dt)
	}
}

func TestRefreshFailureEvents(t *testing.T) {
	const (
		interval = time.Hour // clocks are moved by age, never by sleeping
		secret   = "s3cr3t-value-never-in-events"
		token    = "token-never-in-events"
	)
	sink := &fakeEvents{}
	e := newEnv(t, func(c *Config) { c.RotationInterval = interval; c.Events = sink })
	e.classes["team-a/app"].Parameters["value"] = secret
	target := e.target("vol")
	republish := func() {
		t.Helper()
		req := publishReq("vol-1", target, "app", "team-a")
		req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"` + token + `","expirationTimestamp":"2099-01-01T00:00:00Z"}}`
		if _, err := e.node.NodePublishVolume(t.Context(), req); err != nil {
			t.Fatalf("republish: %v", err)
		}
	}

	// A failing first publish is kubelet's to report (FailedMount): no event.
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	if err := e.publish("vol-1", target); err == nil {
		t.Fatal("publish with a failing backend succeeded")
	}
	e.prov.set(func(p *testProvider) { p.err = nil })
	republish() // now the first publish
	// Successful and not-due republishes: no event.
	republish()
	e.age("vol-1", interval)
	republish()
	if f, r := sink.counts(); f != 0 || r != 0 {
		t.Fatalf("events without a failure or a change: failed=%d rotated=%d", f, r)
	}

	// The backend fails: one event, the content stays.
	e.prov.set(func(p *testProvider) {
		p.err = provider.PermissionDenied("identity team-a/web may not read object %q", "a")
		p.gen = 1
	})
	e.age("vol-1", interval)
	calls := e.prov.callCount()
	republish()
	if f, _ := sink.counts(); f != 1 {
		t.Fatalf("%d events after a failed refresh, want 1", f)
	}
	if got := readFile(t, filepath.Join(target, "a")); got != "a="+secret+"#0" {
		t.Fatalf("last good content lost: %q", got)
	}
	ev := sink.failed[0]
	wantPod := provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0f1e2d3c-aaaa-bbbb-cccc-000000000001", ServiceAccount: "web"}
	if ev.pod != wantPod || ev.class != "app" || provider.CodeOf(ev.err).String() != "PermissionDenied" {
		t.Fatalf("event on %+v class %q code %v", ev.pod, ev.class, provider.CodeOf(ev.err))
	}
	if msg := ev.err.Error(); !strings.Contains(msg, `may not read object "a"`) || strings.Contains(msg, secret) || strings.Contains(msg, token) {
		t.Fatalf("event error %q", msg)
	}

	// Retries within the interval (every quarter interval) fail again, but
	// post nothing more.
	for range 3 {
		e.age("vol-1", interval/4)
		republish()
	}
	if got := e.prov.callCount(); got != calls+4 {
		t.Fatalf("backend calls %d, want %d: the retries did not run", got, calls+4)
	}
	if f, _ := sink.counts(); f != 1 {
		t.Fatalf("%d events within one interval, want 1", f)
	}
	// A full interval after the first event: the next failure posts again.
	e.age("vol-1", interval/4)
	republish()
	if f, _ := sink.counts(); f != 2 {
		t.Fatalf("%d events after a second interval, want 2", f)
	}

	// The backend recovers: the rotation is reported, no failure.
	e.prov.set(func(p *testProvider) { p.err = nil })
	e.age("vol-1", interval)
	republish()
	if got := readFile(t, filepath.Join(target, "a")); got != "a="+secret+"#1" {
		t.Fatalf("not rotated after recovery: %q", got)
	}
	if f, r := sink.counts(); f != 2 || r != 1 {
		t.Fatalf("after recovery: failed=%d rotated=%d, want 2 and 1", f, r)
	}
	if sink.rotated[0].pod != wantPod || sink.rotated[0].class != "app" {
		t.Fatalf("rotation event %+v", sink.rotated[0])
	}
}

// A watch-triggered refresh that fails is reported like a republish one.
func TestWatchRefreshFailureEvent(t *testing.T) {
	sink := &fakeEvents{}
	wp := &watchProvider{testProvider: &testProvider{}}
	e := newEnv(t, func(c *Config) {
		c.Events = sink
		c.Providers = func(string) (provider.Provider, error) { return wp, nil }
	})
	if err := e.publish("vol-1", e.target("vol")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "watch started", func() bool { return len(wp.snapshot()) == 1 })
	wp.set(func(p *testProvider) { p.err = errors.New("connection refused") })
	for range 2 { // two changes, one interval: one event
		n := wp.callCount()
		wp.snapshot()[0].changed()
		waitFor(t, "watch refresh", func() bool { f, _ := sink.counts(); return wp.callCount() > n && f == 1 })
	}
	if f, r := sink.counts(); f != 1 || r != 0 {
		t.Fatalf("failed=%d rotated=%d, want 1 and 0", f, r)
	}
	if code := provider.CodeOf(sink.failed[0].err).String(); code != "Internal" {
		t.Fatalf("code %s", code)
	}
}
