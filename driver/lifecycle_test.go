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
