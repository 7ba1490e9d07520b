package events

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/provider"
)

// recordingSink is an API that keeps the events that reach it: what was
// created, and each patched event as it is after the patch.
type recordingSink struct {
	mu      sync.Mutex
	created []*corev1.Event
	patched []*corev1.Event
	fail    func(verb string) error // if set, its error answers a request
}

func (s *recordingSink) Events(namespace string) kubecore.EventInterface {
	return sinkNamespace{s, namespace}
}

type sinkNamespace struct {
	s  *recordingSink
	ns string
}

func (n sinkNamespace) Create(_ context.Context, e *corev1.Event, _ metav1.CreateOptions) (*corev1.Event, error) {
	s := n.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Namespace != n.ns {
		return nil, fmt.Errorf("event of namespace %s created in %s", e.Namespace, n.ns)
	}
	if s.fail != nil {
		if err := s.fail("create"); err != nil {
			return nil, err
		}
	}
	s.created = append(s.created, e.DeepCopy())
	return e, nil
}

func (n sinkNamespace) Patch(_ context.Context, name string, pt types.PatchType, data []byte, _ metav1.PatchOptions, _ ...string) (*corev1.Event, error) {
	s := n.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		if err := s.fail("patch"); err != nil {
			return nil, err
		}
	}
	if pt != types.MergePatchType {
		return nil, fmt.Errorf("patch type %s", pt)
	}
	for _, c := range slices.Backward(append(slices.Clone(s.created), s.patched...)) {
		if c.Name == name && c.Namespace == n.ns {
			e := c.DeepCopy()
			if err := json.Unmarshal(data, e); err != nil {
				return nil, err
			}
			s.patched = append(s.patched, e)
			return e, nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("events"), name)
}

func (s *recordingSink) counts() (created, patched int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.created), len(s.patched)
}

func waitCounts(t *testing.T, s *recordingSink, created, patched int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, p := s.counts()
		if c == created && p == patched {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink has %d created / %d patched events, want %d / %d", c, p, created, patched)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var pod = provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0f1e2d3c-aaaa-bbbb-cccc-000000000001", ServiceAccount: "web"}

func TestRefreshFailedEvent(t *testing.T) {
	sink := &recordingSink{}
	r := newWithAPI(sink, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	defer r.Close()

	err := provider.PermissionDenied(`class "app" in namespace "team-a", provider "fake": service account "web" is denied`)
	r.RefreshFailed(pod, "app", err)
	waitCounts(t, sink, 1, 0)
	e := sink.created[0]
	o := e.InvolvedObject
	if o.Kind != "Pod" || o.APIVersion != "v1" || o.Namespace != pod.Namespace || o.Name != pod.Name || string(o.UID) != pod.UID {
		t.Errorf("involved object %+v", o)
	}
	if e.Namespace != pod.Namespace || e.Type != corev1.EventTypeWarning || e.Reason != ReasonRefreshFailed {
		t.Errorf("event namespace %q type %q reason %q", e.Namespace, e.Type, e.Reason)
	}
	if e.Source.Component != "csi.secretfs.dev" || e.Source.Host != "node-1" {
		t.Errorf("source %+v", e.Source)
	}
	want := `Refreshing the files of SecretProviderClass "app" failed; the volume keeps its last good content: PermissionDenied: class "app" in namespace "team-a", provider "fake": service account "web" is denied`
	if e.Message != want {
		t.Errorf("message\n%q, want\n%q", e.Message, want)
	}

	// The same failure again is aggregated into the first event (its count
	// patched), not a second object.
	r.RefreshFailed(pod, "app", err)
	waitCounts(t, sink, 1, 1)
	if p := sink.patched[0]; p.Count != 2 || p.Name != e.Name {
		t.Errorf("repeat patched %s count %d, want %s count 2", p.Name, p.Count, e.Name)
	}

	// No pod name (a volume recovered without pod info): nothing to post on.
	r.RefreshFailed(provider.Pod{Namespace: "team-a"}, "app", err)
	r.Rotated(pod, "app") // Options.Rotated is off
	// Events reach the sink in order: once this one is there, anything the
	// two calls above had posted would be too.
	other := pod
	other.Name, other.UID = "web-1", "0f1e2d3c-aaaa-bbbb-cccc-000000000002"
	r.RefreshFailed(other, "app", err)
	waitCounts(t, sink, 2, 1)
	if got := sink.created[1].InvolvedObject.Name; got != "web-1" {
		t.Errorf("posted on %s without a pod name or with rotation events off", got)
	}
}

func TestRotatedEvent(t *testing.T) {
	sink := &recordingSink{}
	r := newWithAPI(sink, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1", Rotated: true})
	defer r.Close()
	r.Rotated(pod, "app")
	waitCounts(t, sink, 1, 0)
	if e := sink.created[0]; e.Type != corev1.EventTypeNormal || e.Reason != ReasonRotated || !strings.Contains(e.Message, `"app"`) {
		t.Errorf("rotation event %s %s %q", e.Type, e.Reason, e.Message)
	}
}

func TestRefreshFailedMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"provider error", provider.Unavailable("vault down"), "Unavailable: vault down"},
		{"plain error", fmt.Errorf("disk on fire"), "Internal: disk on fire"},
		{"wrapped", fmt.Errorf("refresh: %w", provider.NotFound("no object x")), "NotFound: refresh: no object x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RefreshFailedMessage("c", tc.err); !strings.HasSuffix(got, tc.want) {
				t.Errorf("message %q does not end in %q", got, tc.want)
			}
		})
	}

	// Long messages are cut at MaxMessage bytes on a rune boundary.
	long := provider.Unavailable("%s", strings.Repeat("é", 2*MaxMessage))
	got := RefreshFailedMessage("c", long)
	if len(got) > MaxMessage || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("long message: %d bytes, valid UTF-8 %v, ends %q", len(got), utf8.ValidString(got), got[len(got)-5:])
	}
}

func TestOmittedAndServedStaleEvents(t *testing.T) {
	sink := &recordingSink{}
	r := newWithAPI(sink, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	defer r.Close()
	r.Omitted(pod, "app", nil) // nothing left out: no event
	r.Omitted(pod, "app", []string{`objects[1] (objectName "tls")`})
	waitCounts(t, sink, 1, 0)
	if e := sink.created[0]; e.Type != corev1.EventTypeNormal || e.Reason != ReasonOmitted || !strings.Contains(e.Message, `objectName "tls"`) {
		t.Errorf("omitted event %s %s %q", e.Type, e.Reason, e.Message)
	}
	r.ServedStale(pod, "app", 90*time.Second, provider.Unavailable("vault down"))
	waitCounts(t, sink, 2, 0)
	if e := sink.created[1]; e.Type != corev1.EventTypeWarning || e.Reason != ReasonServedStale ||
		!strings.Contains(e.Message, "1m30s ago") || !strings.Contains(e.Message, "Unavailable: vault down") {
		t.Errorf("stale event %s %s %q", e.Type, e.Reason, e.Message)
	}
}

func TestNormalEvent(t *testing.T) {
	sink := &recordingSink{}
	r := newWithAPI(sink, clock.RealClock{}, Options{Component: "csi.secretfs.dev", Host: "node-1"})
	defer r.Close()
	r.Normal(provider.Pod{}, "SecretRestart", "no pod: not posted")
	r.Normal(pod, "SecretRestart", strings.Repeat("x", 2*MaxMessage))
	waitCounts(t, sink, 1, 0)
	if e := sink.created[0]; e.Type != corev1.EventTypeNormal || e.Reason != "SecretRestart" || len(e.Message) > MaxMessage || e.InvolvedObject.Name != pod.Name {
		t.Errorf("normal event %s %s on %s, message of %d bytes", e.Type, e.Reason, e.InvolvedObject.Name, len(e.Message))
	}
}
