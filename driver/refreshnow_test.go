package driver

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// requestedRefreshes counts the refreshes with trigger "requested", whatever
// their result.
func requestedRefreshes(t *testing.T, e *env) float64 {
	t.Helper()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if f.GetName() != "secretfs_volume_refreshes_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "trigger" && l.GetValue() == "requested" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// A requested refresh reaches every volume of the class on the node (and
// none of another class), goes to the backend although the node cache holds
// a fresh answer, rotates the content, and is recorded in the status.
func TestRequestedRefreshOfAClass(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = time.Hour })
	for _, id := range []string{"a1", "a2", "a3"} {
		if err := e.publish(id, e.target(id)); err != nil {
			t.Fatal(err)
		}
	}
	other := publishReq("b1", e.target("b1"), "other", "team-b")
	if _, err := e.node.NodePublishVolume(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	calls := e.prov.callCount()
	e.prov.set(func(p *testProvider) { p.gen = 1 })

	n, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Class: "app"}, RequestedByCommand)
	if err != nil || n != 3 {
		t.Fatalf("RequestRefresh: %d volumes, %v; want 3", n, err)
	}
	waitFor(t, "three requested refreshes", func() bool { return requestedRefreshes(t, e) == 3 })
	for _, id := range []string{"a1", "a2", "a3"} {
		if got := readFile(t, e.target(id)+"/a"); got != "a=v#1" {
			t.Errorf("%s after the refresh: %q", id, got)
		}
	}
	// One backend call: the first volume's refresh goes to the backend, the
	// other two share its answer (one identity), and class "other" is untouched.
	if got := e.prov.callCount() - calls; got != 1 {
		t.Errorf("backend calls for the requested refresh: %d, want 1", got)
	}
	for _, s := range e.d.Status() {
		requested := s.Class == "app"
		if requested != !s.LastRequestedRefresh.IsZero() || requested != (s.RequestedBy == RequestedByCommand) {
			t.Errorf("status of %s: %+v", s.VolumeID, s)
		}
	}
}

// Requests inside --min-rotation-interval wait for its end, and all of them
// make one refresh.
func TestRequestedRefreshesCoalesce(t *testing.T) {
	const gap = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = gap })
	if err := e.publish("a1", e.target("a1")); err != nil {
		t.Fatal(err)
	}
	target := RefreshTarget{Namespace: "team-a", Class: "app"}
	if _, err := e.d.RequestRefresh(target, RequestedByCommand); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first requested refresh", func() bool { return requestedRefreshes(t, e) == 1 })
	for range 20 {
		if n, err := e.d.RequestRefresh(target, RequestedByAnnotation); err != nil || n != 1 {
			t.Fatalf("RequestRefresh: %d, %v", n, err)
		}
	}
	waitFor(t, "the second requested refresh", func() bool { return requestedRefreshes(t, e) == 2 })
	time.Sleep(2 * gap) // nothing else is pending
	if got := requestedRefreshes(t, e); got != 2 {
		t.Fatalf("requested refreshes: %v, want 2 (20 requests in the gap fold into one)", got)
	}
	if s := e.d.Status()[0]; s.RequestedBy != RequestedByAnnotation {
		t.Errorf("status: %+v", s)
	}
}

func TestRequestRefreshRefusesBadTargets(t *testing.T) {
	e := newEnv(t, nil)
	for _, target := range []RefreshTarget{
		{Namespace: "team-a"},
		{Namespace: "team-a", Class: "app", Pod: "web-0"},
		{Class: "app"},
		{Namespace: "Team_A", Class: "app"},
		{Namespace: "team-a", Pod: "../web"},
	} {
		if _, err := e.d.RequestRefresh(target, RequestedByCommand); provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("RequestRefresh(%+v): %v, want InvalidArgument", target, err)
		}
	}
	// A pod or class with no volume on this node is no error and no work.
	if n, err := e.d.RequestRefresh(RefreshTarget{Namespace: "team-a", Pod: "elsewhere"}, RequestedByCommand); n != 0 || err != nil {
		t.Errorf("a pod not on this node: %d, %v", n, err)
	}
}

// POST /refresh on the status socket: a RefreshTarget in, the count out;
// anything else is refused without touching a volume.
func TestStatusHandlerRefresh(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MinRotationInterval = time.Hour })
	if err := e.publish("a1", e.target("a1")); err != nil {
		t.Fatal(err)
	}
	h := e.d.StatusHandler()
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"namespace":"team-a","pod":"web-0"}`, http.StatusOK, `{"volumes":1}`},
		{`{"namespace":"team-a","class":"app","extra":1}`, http.StatusBadRequest, "not a JSON object"},
		{`{"namespace":"team-a"}`, http.StatusBadRequest, "exactly one"},
		{strings.Repeat(" ", 5<<10) + `{}`, http.StatusBadRequest, "not a JSON object"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/refresh", strings.NewReader(tc.body)))
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("POST %.40q: %d %s, want %d with %q", tc.body, rec.Code, rec.Body, tc.code, tc.want)
		}
	}
	waitFor(t, "the requested refresh", func() bool { return requestedRefreshes(t, e) == 1 })
}
