package driver

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// recordingHook records what the lifecycle tells hooks.
type recordingHook struct {
	mu     sync.Mutex
	events []string
}

func (h *recordingHook) Changed(_ context.Context, v hook.Volume) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var paths []string
	for _, f := range v.Files {
		paths = append(paths, f.Path+"="+string(f.Contents))
	}
	class := "<nil>"
	if v.Class != nil {
		class = v.Class.Namespace + "/" + v.Class.Name
	}
	what := "changed " // a refresh that changed the files
	if v.First {
		what = "published " // a first publish
	}
	h.events = append(h.events, what+v.ID+" "+class+" "+v.Pod.Namespace+" "+v.Provider+" "+strings.Join(paths, ","))
}

func (h *recordingHook) Gone(v hook.Volume) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, "gone "+v.ID)
}

func (h *recordingHook) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.events
	h.events = nil
	return out
}

// Hooks hear of a first publish before it returns (Volume.First), of a
// refresh only when the content changed (not First), and of every way a volume ends: unpublish, a failed
// first publish, and a volume unmounted behind the driver's back.
func TestHooksFollowTheLifecycle(t *testing.T) {
	const interval = 300 * time.Millisecond
	h := &recordingHook{}
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now; c.Hooks = []hook.Hook{h} })
	target := e.target("vol")
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); !slices.Equal(got, []string{"published vol-1 team-a/app team-a test a=a=v#0,b=b=v#0,c=c=v#0"}) {
		t.Fatalf("after first publish: %q", got)
	}

	// Due but unchanged: no hook. Due and changed: Changed.
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); len(got) != 0 {
		t.Fatalf("unchanged refresh told hooks: %q", got)
	}
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); !slices.Equal(got, []string{"changed vol-1 team-a/app team-a test a=a=v#1,b=b=v#1,c=c=v#1"}) {
		t.Fatalf("after a rotation: %q", got)
	}

	// Unmounted behind our back: Gone, then a first publish again.
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); !slices.Equal(got, []string{"gone vol-1", "published vol-1 team-a/app team-a test a=a=v#1,b=b=v#1,c=c=v#1"}) {
		t.Fatalf("after an unmount behind the driver's back: %q", got)
	}

	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); !slices.Equal(got, []string{"gone vol-1"}) {
		t.Fatalf("after unpublish: %q", got)
	}

	// A failed first publish: Gone, never Changed.
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	if err := e.publish("vol-2", e.target("vol2")); err == nil {
		t.Fatal("publish with a failing backend succeeded")
	}
	if got := h.take(); !slices.Equal(got, []string{"gone vol-2"}) {
		t.Fatalf("after a failed publish: %q", got)
	}
	if m := mountsUnder(t, filepath.Dir(target)); len(m) != 0 {
		t.Fatalf("left mounted: %v", m)
	}
}

// holdingHook records like recordingHook, holds every change it is told
// (hook.Volume.Hold) until release, and notes what the volume's record said
// while it was being told.
type holdingHook struct {
	recordingHook
	held   []func()
	untold []string
}

func (h *holdingHook) Changed(ctx context.Context, v hook.Volume) {
	h.recordingHook.Changed(ctx, v)
	m, err := loadRecord(v.Target)
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.untold = append(h.untold, "error: "+err.Error())
	} else {
		h.untold = append(h.untold, m.Untold)
	}
	if v.Hold != nil {
		h.held = append(h.held, v.Hold())
	}
}

func (h *holdingHook) release() {
	h.mu.Lock()
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, done := range held {
		done()
	}
}

func (h *holdingHook) takeUntold() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.untold
	h.untold = nil
	return out
}

// A driver killed while it tells the hooks of a publish or a change, or
// while a hook still holds a change (the restart on change's queue), leaves
// the record saying so, and the next driver tells the hooks again at the
// volume's first republish: a first publish as a first publish, a change as
// a change with the files as they are then. Once every hook is done, the
// next save clears it and a restart tells nothing.
func TestHooksHearAgainWhatADeadDriverLeftUntold(t *testing.T) {
	const interval = 300 * time.Millisecond
	h := &holdingHook{}
	clock := newClock()
	var cfg Config
	e := newEnv(t, func(c *Config) {
		c.RotationInterval, c.Now, c.Hooks = interval, clock.Now, []hook.Hook{h}
		cfg = *c
	})
	restart := func() { e.stop(); e.start(cfg) }
	target := e.target("vol")
	const published = "published vol-1 team-a/app team-a test a=a=v#0,b=b=v#0,c=c=v#0"
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); !slices.Equal(got, []string{published}) {
		t.Fatalf("first publish: %q", got)
	}
	if got := h.takeUntold(); !slices.Equal(got, []string{untoldPublish}) {
		t.Fatalf("the record while the hooks heard of the first publish: %q", got)
	}
	h.release()

	// 1. Killed before a refresh saved the record again: the first publish
	// is told again, once.
	restart()
	for range 2 {
		if err := e.publish("vol-1", target); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.take(); !slices.Equal(got, []string{published}) {
		t.Fatalf("republishes after the restart: %q", got)
	}
	h.release()
	h.takeUntold()

	// 2. A change a hook still holds survives a restart and a refresh that
	// changed nothing.
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	const changed = "changed vol-1 team-a/app team-a test a=a=v#1,b=b=v#1,c=c=v#1"
	if got := h.take(); !slices.Equal(got, []string{changed}) {
		t.Fatalf("after a rotation: %q", got)
	}
	if got := h.takeUntold(); !slices.Equal(got, []string{untoldChange}) {
		t.Fatalf("the record while the hooks heard of the change: %q", got)
	}
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil { // due, unchanged: still held
		t.Fatal(err)
	}
	if m, err := loadRecord(target); err != nil || m.Untold != untoldChange {
		t.Fatalf("record after an unchanged refresh while held: %+v, %v", m, err)
	}
	restart()
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); !slices.Equal(got, []string{changed}) {
		t.Fatalf("republish after the restart: %q", got)
	}

	// 3. Every hook done: the next save clears it; a restart tells nothing.
	h.release()
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if m, err := loadRecord(target); err != nil || m.Untold != "" {
		t.Fatalf("record after every hook is done: %+v, %v", m, err)
	}
	restart()
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); len(got) != 0 {
		t.Fatalf("a restart with nothing untold told the hooks: %q", got)
	}
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
}
