package ignored

import (
	"context"
	"strings"
	"testing"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

type sink struct{ msgs []string }

func (s *sink) Warning(_ provider.Pod, reason, msg string) { s.msgs = append(s.msgs, reason+": "+msg) }

func TestOneEventPerVolume(t *testing.T) {
	cls := &class.Class{Name: "app", SecretObjects: []class.SecretObject{{SecretName: "s"}}, Unknown: []string{"rotationPollInterval"}}
	s := &sink{}
	h := New(s, false, true)
	v := hook.Volume{ID: "v1", Pod: provider.Pod{Namespace: "ns", Name: "p"}, Class: cls}
	h.Changed(context.Background(), v)
	h.Changed(context.Background(), v) // a rotation: not again
	if len(s.msgs) != 1 {
		t.Fatalf("want one event, got %q", s.msgs)
	}
	for _, want := range []string{Reason, "spec.secretObjects (1 Secrets) is not synced", "--sync-secrets", "rotationPollInterval"} {
		if !strings.Contains(s.msgs[0], want) {
			t.Errorf("message %q lacks %q", s.msgs[0], want)
		}
	}
	h.Gone(v)
	h.Changed(context.Background(), v) // a new publish of the same id
	if len(s.msgs) != 2 {
		t.Fatalf("want a second event after Gone, got %d", len(s.msgs))
	}
}

func TestNothingIgnoredNoEvent(t *testing.T) {
	s := &sink{}
	h := New(s, true, true)
	h.Changed(context.Background(), hook.Volume{ID: "v", Class: &class.Class{Name: "a", SecretObjects: []class.SecretObject{{SecretName: "s"}}}})
	h.Changed(context.Background(), hook.Volume{ID: "w"}) // recovered, class unknown yet
	if len(s.msgs) != 0 {
		t.Fatalf("events %q", s.msgs)
	}
}

func TestRestartOff(t *testing.T) {
	cls := &class.Class{Name: "app", Parameters: map[string]string{class.ParamOnChange: class.OnChangeRestart}}
	for _, on := range []bool{false, true} {
		s := &sink{}
		New(s, true, on).Changed(context.Background(), hook.Volume{ID: "v", Class: cls})
		if on && len(s.msgs) != 0 || !on && (len(s.msgs) != 1 || !strings.Contains(s.msgs[0], "--restart-on-change")) {
			t.Errorf("restarts on=%v: events %q", on, s.msgs)
		}
	}
}
