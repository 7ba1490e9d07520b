package driver

import (
	"context"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// contentEvents is fakeEvents plus the content events.
type contentEvents struct {
	fakeEvents
	mu      sync.Mutex
	omitted [][]string
	stale   []time.Duration
}

func (c *contentEvents) Omitted(_ provider.Pod, _ string, objects []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.omitted = append(c.omitted, objects)
}

func (c *contentEvents) ServedStale(_ provider.Pod, _ string, age time.Duration, _ error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stale = append(c.stale, age)
}

func (c *contentEvents) counts() (omitted, stale int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.omitted), len(c.stale)
}

// userFiles lists the files a pod sees at target (not the ..-names).
func userFiles(t *testing.T, target string) []string {
	t.Helper()
	ents, err := os.ReadDir(target)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "..") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

func (e *fakeEnv) publishClass(id, class, sa string) error {
	req := publishReq(id, e.target(id), class, "team-a")
	req.VolumeContext[provider.AttrServiceAccount] = sa
	_, err := e.node.NodePublishVolume(context.Background(), req)
	return err
}

// A JSON key and a template rendered from two objects, the objects hidden,
// for the fake backend; a broken template fails the publish naming the
// template and line, and mounts nothing.
func TestContentKeyPathAndTemplate(t *testing.T) {
	e := newFakeEnv(t, nil)
	e.classes["team-a/tpl"] = &class.Class{Name: "tpl", Namespace: "team-a", Provider: "fake", Parameters: map[string]string{
		"objects": "- objectName: cfg\n  objectAlias: password\n  value: '{\"db\":{\"password\":\"pw-1\"}}'\n  keyPath: db.password\n" +
			"- objectName: user\n  value: app\n",
		"secretfs.dev/templates":   "- path: app.env\n  mode: \"0400\"\n  template: \"USER={{ .user }}\\nPASSWORD={{ .password | quote }}\\n\"\n",
		"secretfs.dev/hideObjects": "true",
	}}
	if err := e.publishClass("tpl", "tpl", "web"); err != nil {
		t.Fatal(err)
	}
	if got := userFiles(t, e.target("tpl")); strings.Join(got, ",") != "app.env" {
		t.Fatalf("files %v, want only app.env", got)
	}
	if got := readFile(t, e.target("tpl")+"/app.env"); got != "USER=app\nPASSWORD=\"pw-1\"\n" {
		t.Fatalf("app.env = %q", got)
	}
	if fi, _ := os.Stat(e.target("tpl") + "/app.env"); fi.Mode().Perm() != 0o400 {
		t.Errorf("app.env mode %v", fi.Mode().Perm())
	}
	if n := e.fake.Calls(); n != 2 {
		t.Errorf("%d backend calls, want 2 (the plain object, the keyPath object)", n)
	}

	e.classes["team-a/broken"] = &class.Class{Name: "broken", Namespace: "team-a", Provider: "fake", Parameters: map[string]string{
		"objects":                "- objectName: user\n  value: app\n",
		"secretfs.dev/templates": "- path: app.env\n  template: \"USER={{ .user }}\\nX={{ .nope }}\\n\"\n",
	}}
	err := e.publishClass("broken", "broken", "web")
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `template "app.env": line 2`) {
		t.Fatalf("broken template: %v", err)
	}
	if m := mountsUnder(t, e.target("broken")); len(m) != 0 {
		t.Fatalf("a refused volume is mounted: %v", m)
	}
}

// A missing optional object is left out with one event, also across
// refreshes; a missing required one still fails.
func TestContentOptionalObject(t *testing.T) {
	sink := &contentEvents{}
	e := newFakeEnv(t, func(c *Config) { c.Events = sink })
	e.classes["team-a/opt"] = &class.Class{Name: "opt", Namespace: "team-a", Provider: "fake", Parameters: map[string]string{
		"objects": "array:\n  - |\n    objectName: here\n    value: x\n  - |\n    objectName: gone\n    optional: true\n",
	}}
	if err := e.publishClass("opt", "opt", "web"); err != nil {
		t.Fatal(err)
	}
	if got := userFiles(t, e.target("opt")); strings.Join(got, ",") != "here" {
		t.Fatalf("files %v", got)
	}
	for range 3 {
		e.age("opt", 2*time.Hour)
		if err := e.publishClass("opt", "opt", "web"); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := sink.counts(); n != 1 || !strings.Contains(sink.omitted[0][0], `"gone"`) {
		t.Fatalf("%d omitted events (%v), want 1 naming gone", n, sink.omitted)
	}
	e.classes["team-a/req"] = &class.Class{Name: "req", Namespace: "team-a", Provider: "fake", Parameters: map[string]string{
		"objects": "- objectName: here\n  value: x\n- objectName: gone\n",
	}}
	if err := e.publishClass("req", "req", "web"); status.Code(err) != codes.NotFound {
		t.Fatalf("missing required object: %v", err)
	}
}

// A class's own interval decides when a republish refreshes, clamped to
// the driver's bounds, and is in the volume's status file.
func TestContentClassInterval(t *testing.T) {
	e := newFakeEnv(t, func(c *Config) { c.RotationInterval = time.Hour; c.MinRotationInterval = time.Minute })
	for name, iv := range map[string]string{"fast": "5m", "tiny": "1s"} {
		e.classes["team-a/"+name] = &class.Class{Name: name, Namespace: "team-a", Provider: "fake", Parameters: map[string]string{
			"objects": "- objectName: a\n  value: x\n", "secretfs.dev/rotationInterval": iv}}
		if err := e.publishClass(name, name, "web"); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]string{"fast": `"rotationInterval":"5m0s"`, "tiny": `"rotationInterval":"1m0s"`} {
		if got := readFile(t, e.target(name)+"/"+recordFile); !strings.Contains(got, want) {
			t.Errorf("%s status %s, want %s", name, got, want)
		}
	}
	for _, st := range e.d.Status() {
		if want := map[string]string{"fast": "5m0s", "tiny": "1m0s"}[st.Class]; st.RotationInterval.String() != want || !st.NextRefresh.Equal(st.LastFetch.Add(mustDuration(t, want))) {
			t.Errorf("status of %s: interval %s next refresh %v after the last fetch, want %s", st.Class, st.RotationInterval, st.NextRefresh.Sub(st.LastFetch), want)
		}
	}
	calls := e.fake.Calls()
	e.age("fast", 4*time.Minute)
	if err := e.publishClass("fast", "fast", "web"); err != nil {
		t.Fatal(err)
	}
	if e.fake.Calls() != calls {
		t.Fatal("refreshed before the class's interval")
	}
	e.age("fast", 2*time.Minute)
	if err := e.publishClass("fast", "fast", "web"); err != nil {
		t.Fatal(err)
	}
	if e.fake.Calls() != calls+1 {
		t.Fatalf("not refreshed after the class's 5m (driver's: 1h): %d calls, want %d", e.fake.Calls(), calls+1)
	}
}

// staleIfError: a new volume of the same identity and class gets the node
// cache's last good content when the backend is down, with a Warning;
// another identity, a refusal, or a class without it gets the error.
func TestContentStaleIfError(t *testing.T) {
	sink := &contentEvents{}
	clock := newClock()
	e := newFakeEnv(t, func(c *Config) { c.Events = sink; c.MinRotationInterval = time.Millisecond; c.Now = clock.Now })
	params := map[string]string{"objects": "a", "value": "v", "secretfs.dev/rotationInterval": "1ms", "secretfs.dev/staleIfError": "1h"}
	e.classes["team-a/stale"] = &class.Class{Name: "stale", Namespace: "team-a", Provider: "test", Parameters: params}
	if err := e.publishClass("s1", "stale", "web"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.prov.lastReq.Parameters["secretfs.dev/staleIfError"]; ok {
		t.Fatal("the provider saw the driver's parameters")
	}
	clock.Advance(2 * time.Millisecond) // the cache entry (max age 1ms) has expired
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	if err := e.publishClass("s2", "stale", "web"); err != nil {
		t.Fatalf("new pod with the backend down: %v", err)
	}
	if got := readFile(t, e.target("s2")+"/a"); got != "a=v#0" {
		t.Fatalf("stale content %q", got)
	}
	if _, n := sink.counts(); n != 1 {
		t.Fatalf("%d stale events, want 1", n)
	}
	if err := e.publishClass("s3", "stale", "api"); status.Code(err) != codes.Unavailable {
		t.Fatalf("another identity: %v", err)
	}
	e.classes["team-a/plain"] = &class.Class{Name: "plain", Namespace: "team-a", Provider: "test", Parameters: map[string]string{"objects": "a", "value": "v"}}
	if err := e.publishClass("s4", "plain", "web"); status.Code(err) != codes.Unavailable {
		t.Fatalf("class without staleIfError: %v", err)
	}
	e.prov.set(func(p *testProvider) { p.err = provider.PermissionDenied("revoked") })
	if err := e.publishClass("s5", "stale", "web"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("refused identity: %v", err)
	}
	if _, n := sink.counts(); n != 1 {
		t.Fatalf("%d stale events, want 1", n)
	}
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
