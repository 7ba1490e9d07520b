package driver

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/secretfs/secretfs/provider"
)

// warnEvents is fakeEvents plus any Warning Event.
type warnEvents struct {
	fakeEvents
	mu       sync.Mutex
	warnings []string // "pod reason message"
}

func (w *warnEvents) Warning(pod provider.Pod, reason, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.warnings = append(w.warnings, pod.Name+" "+reason+" "+msg)
}

func (w *warnEvents) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.warnings...)
}

// A provider configured for a token audience (vault: "vault", the
// default) that kubelet did not send: a Warning Event on the pod and a log
// line, once per volume; the volume mounts. With the token sent, nothing.
func TestWarnsWhenConfiguredAudienceNotSent(t *testing.T) {
	sink := &warnEvents{}
	x := newExtEnv(t, func(c *Config) { c.Events = sink })
	x.serve("vault", true)
	x.values.Store("db", "v1")
	x.class("app", "vault", map[string]string{"objects": "- objectName: db\n"})
	target := x.target("v1")
	for range 2 { // publish, then a republish
		if err := x.publishPod("vol-1", target, "app", "uid-1"); err != nil {
			t.Fatal(err)
		}
	}
	got := sink.all()
	if len(got) != 1 || !strings.HasPrefix(got[0], "pod-uid-1 "+ReasonTokenMissing+" ") ||
		!strings.Contains(got[0], `service-account token for "vault"`) || !strings.Contains(got[0], "tokenRequests") {
		t.Fatalf("events %q, want one %s naming the audience", got, ReasonTokenMissing)
	}
	if logs := x.logs.String(); !strings.Contains(logs, "token audiences kubelet did not send") || !strings.Contains(logs, `"pod":"pod-uid-1"`) {
		t.Errorf("no log line naming the pod:\n%s", logs)
	}

	// kubelet sends the vault token: no warning.
	req := publishReq("vol-2", x.target("v2"), "app", "team-a")
	req.VolumeContext[provider.AttrPodUID] = "uid-2"
	req.VolumeContext[provider.AttrPodName] = "pod-uid-2"
	req.Secrets = map[string]string{provider.AttrTokens: `{"vault":{"token":"t0k3n-not-logged","expirationTimestamp":"2099-01-01T00:00:00Z"}}`}
	if _, err := x.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := sink.all(); len(got) != 1 {
		t.Errorf("events %q after a publish with the vault token, want still 1", got)
	}
	if strings.Contains(x.logs.String(), "t0k3n-not-logged") {
		t.Error("a token in the log")
	}
}
