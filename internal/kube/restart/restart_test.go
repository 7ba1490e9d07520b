package restart

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// What the hook costs on the publish path when it has nothing to do: a
// class without the opt-in, a first publish, a refresh that changed
// nothing (no Files): no allocation, no job.
func TestNothingToDoCostsNothing(t *testing.T) {
	r, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	files := []provider.File{{Path: "pass", Mode: 0o644, Contents: []byte("v2")}}
	pod := provider.Pod{Namespace: "ns", Name: "p", UID: "u"}
	opted := &class.Class{Name: "app", Namespace: "ns", Parameters: map[string]string{class.ParamOnChange: class.OnChangeRestart}}
	for name, v := range map[string]hook.Volume{
		"a class without the opt-in": {Class: &class.Class{Name: "app", Namespace: "ns", Parameters: map[string]string{"objects": "x"}}, Files: files, Pod: pod},
		"onChange: none":             {Class: &class.Class{Name: "app", Namespace: "ns", Parameters: map[string]string{class.ParamOnChange: class.OnChangeNone}}, Files: files, Pod: pod},
		"a first publish":            {Class: opted, Files: files, Pod: pod, First: true},
		"no files":                   {Class: opted, Pod: pod},
		"a recovered volume":         {Files: files, Pod: pod},
	} {
		if a := testing.AllocsPerRun(100, func() { r.Changed(context.Background(), v) }); a != 0 {
			t.Errorf("%s: %v allocations per Changed", name, a)
		}
		r.mu.Lock()
		queued := len(r.pending) + r.busy
		r.mu.Unlock()
		if queued != 0 {
			t.Errorf("%s: a job was queued", name)
		}
	}
}

// A full queue drops the job and says so on the pod; jobs of one pod
// coalesce into one. A queued job holds its change (hook.Volume.Hold), so a
// driver that dies before it ran tells it again after the restart; the job
// it replaces lets go, and a dropped one holds nothing.
func TestQueueBoundAndCoalescing(t *testing.T) {
	var holds atomic.Int32
	hold := func() func() {
		holds.Add(1)
		var once sync.Once
		return func() { once.Do(func() { holds.Add(-1) }) }
	}
	events := &recorder{}
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &Restarter{opts: Options{Queue: 1, Events: events}, log: slog.New(slog.DiscardHandler), metrics: m, queue: make(chan string, 1), pending: map[string]job{}}
	opted := &class.Class{Name: "app", Namespace: "ns", Parameters: map[string]string{class.ParamOnChange: class.OnChangeRestart}}
	v := func(uid, content string) hook.Volume {
		return hook.Volume{Class: opted, Pod: provider.Pod{Namespace: "ns", Name: "p-" + uid, UID: uid},
			Files: []provider.File{{Path: "pass", Contents: []byte(content)}}, Hold: hold}
	}
	r.Changed(context.Background(), v("a", "1"))
	r.Changed(context.Background(), v("a", "2")) // coalesced: the newest wins
	if len(r.queue) != 1 || r.pending["a"].sum != Digest("ns", "app", v("a", "2").Files) || len(events.warnings) != 0 {
		t.Fatalf("queue %d, pending %v, events %q", len(r.queue), r.pending, events.warnings)
	}
	r.Changed(context.Background(), v("b", "1")) // the queue is full
	if len(r.queue) != 1 || len(r.pending) != 1 || len(events.warnings) != 1 {
		t.Fatalf("queue %d, pending %d, events %q", len(r.queue), len(r.pending), events.warnings)
	}
	if n := holds.Load(); n != 1 {
		t.Fatalf("%d changes held, want 1 (the queued job's)", n)
	}
	if n := testutil.ToFloat64(m.results.WithLabelValues(resultDropped)); n != 1 {
		t.Fatalf("secretfs_restarts_total{result=dropped} %v, want 1", n)
	}
}

type recorder struct{ warnings, normals []string }

func (r *recorder) Normal(_ provider.Pod, reason, msg string) {
	r.normals = append(r.normals, reason+": "+msg)
}
func (r *recorder) Warning(_ provider.Pod, reason, msg string) {
	r.warnings = append(r.warnings, reason+": "+msg)
}
