package driver

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/provider"
)

// The SSCD series count what the CSI calls did: first publishes (ok and
// failed, with the class's provider once known), unpublishes, and refreshes
// on republish.
func TestSSCDSeriesFromCSICalls(t *testing.T) {
	const interval = 20 * time.Millisecond
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	ctx := context.Background()
	target := e.target("vol")
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if _, err := e.node.NodePublishVolume(ctx, publishReq("vol-2", e.target("ghost"), "ghost", "team-a")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("publish of a class with an unknown provider: %v", err)
	}
	if _, err := e.node.NodePublishVolume(ctx, publishReq("vol-3", e.target("none"), "none", "team-a")); status.Code(err) != codes.NotFound {
		t.Fatalf("publish of a missing class: %v", err)
	}
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	clock.Advance(interval) // let the rotation come due
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"node_publish_total", map[string]string{"provider": "test", "os_type": runtime.GOOS}, 1},
		{"node_publish_error_total", map[string]string{"provider": "nosuch", "error_type": "InvalidArgument", "os_type": runtime.GOOS}, 1},
		{"node_publish_error_total", map[string]string{"provider": "", "error_type": "NotFound", "os_type": runtime.GOOS}, 1}, // no class, no provider
		{"rotation_reconcile_total", map[string]string{"provider": "test", "rotated": "true", "os_type": runtime.GOOS}, 1},
		{"rotation_reconcile_error_total", map[string]string{"provider": "test", "rotated": "false", "error_type": "Unavailable", "os_type": runtime.GOOS}, 1},
		{"node_unpublish_total", map[string]string{"os_type": runtime.GOOS}, 1},
		{"node_unpublish_error_total", map[string]string{"os_type": runtime.GOOS}, 0},
	} {
		if got, ok := seriesValue(t, e.reg, c.name, c.labels); !ok {
			t.Errorf("case %d: no series %s%v", i, c.name, c.labels)
		} else if got != c.want {
			t.Errorf("case %d: %v, want %v", i, got, c.want)
		}
	}
	if n := seriesCount(t, e.reg, "rotation_reconcile_duration_sec"); n != 1 {
		t.Errorf("rotation_reconcile_duration_sec has %d series, want 1", n)
	}
}

// seriesValue is the value of the counter or gauge name{labels} in reg, and
// whether reg has that series at all (a renamed metric or label has none).
func seriesValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; !ok || v != l.GetValue() {
					continue metrics
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue(), true
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// seriesCount is how many series the family name has in reg.
func seriesCount(t *testing.T, reg prometheus.Gatherer, name string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}
