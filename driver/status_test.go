package driver

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
)

// Status has one row per mounted volume with counts and times, the last
// refresh error while it lasts, and nothing once the volume is gone.
func TestStatus(t *testing.T) {
	const interval = 20 * time.Millisecond
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	target := e.target("vol")
	if got := e.d.Status(); len(got) != 0 {
		t.Fatalf("status before publishing: %+v", got)
	}
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	st := e.d.Status()
	if len(st) != 1 {
		t.Fatalf("status %+v", st)
	}
	s := st[0]
	// objects a,b,c with value v: "a=v#0" and so on.
	if s.VolumeID != "vol-1" || s.Namespace != "team-a" || s.Pod != "web-0" || s.Class != "app" || s.Provider != "test" ||
		s.Files != 3 || s.Bytes != 15 || s.LastFetch.IsZero() || !s.NextRefresh.Equal(s.LastFetch.Add(interval)) || s.LastError != "" {
		t.Fatalf("status %+v", s)
	}

	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	clock.Advance(interval) // let the rotation come due
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	s = e.d.Status()[0]
	if !strings.Contains(s.LastError, "backend down") || s.Files != 3 {
		t.Fatalf("after a failed refresh: %+v", s)
	}
	// The served JSON carries no file content.
	rec := httptest.NewRecorder()
	e.d.StatusHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/volumes", nil))
	var served []VolumeStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &served); err != nil || len(served) != 1 || served[0].VolumeID != "vol-1" {
		t.Fatalf("served %s: %v", rec.Body, err)
	}
	if strings.Contains(rec.Body.String(), "a=v#") {
		t.Fatalf("status shows file content: %s", rec.Body)
	}

	e.prov.set(func(p *testProvider) { p.err = nil; p.gen = 1 })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if s = e.d.Status()[0]; s.LastError != "" {
		t.Fatalf("error kept after a good refresh: %+v", s)
	}
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := e.d.Status(); len(got) != 0 {
		t.Fatalf("status after unpublish: %+v", got)
	}
}
