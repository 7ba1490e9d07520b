package driver

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/provider"
)

// The Secrets Store CSI Driver 1.6 series, as its Prometheus exporter
// publishes them (counters with _total; the histogram as its _bucket, _sum
// and _count series), with their label sets.
var sscdSeries = map[string][]string{
	"node_publish_total":              {"os_type", "provider"},
	"node_unpublish_total":            {"os_type"},
	"node_publish_error_total":        {"error_type", "os_type", "provider"},
	"node_unpublish_error_total":      {"os_type"},
	"rotation_reconcile_total":        {"os_type", "provider", "rotated"},
	"rotation_reconcile_error_total":  {"error_type", "os_type", "provider", "rotated"},
	"rotation_reconcile_duration_sec": {"os_type"},
}

func TestSSCDMetricNamesAndLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	failed := status.Error(codes.NotFound, "no such class")
	m.published("azure", nil)
	m.published("azure", failed)
	m.unpublished(nil)
	m.unpublished(errors.New("busy"))
	m.refreshed("azure", "republish", true, nil, time.Millisecond)
	m.refreshed("azure", "watch", false, failed, time.Millisecond)

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "secretfs_") {
			continue
		}
		for _, metric := range f.GetMetric() {
			var labels []string
			for _, l := range metric.GetLabel() {
				labels = append(labels, l.GetName())
			}
			sort.Strings(labels)
			got[f.GetName()] = labels
		}
	}
	for _, name := range slices.Sorted(maps.Keys(sscdSeries)) {
		if !slices.Equal(got[name], sscdSeries[name]) {
			t.Errorf("%s labels %v, want %v", name, got[name], sscdSeries[name])
		}
	}
	for name := range got {
		if _, ok := sscdSeries[name]; !ok {
			t.Errorf("unexpected series %s without the secretfs_ prefix", name)
		}
	}
}

func TestSSCDMetricValues(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.published("fake", nil)
	m.published("fake", nil)
	m.published("fake", status.Error(codes.PermissionDenied, "denied"))
	m.refreshed("fake", "republish", true, nil, 0)
	m.refreshed("fake", "republish", false, nil, 0)
	m.refreshed("fake", "watch", true, status.Error(codes.Unavailable, "down"), 0)
	for i, c := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.sscd.publish.WithLabelValues("fake", osType), 2},
		{m.sscd.publishErrors.WithLabelValues("fake", "PermissionDenied", osType), 1},
		{m.sscd.rotations.WithLabelValues("fake", "true", osType), 1},
		{m.sscd.rotations.WithLabelValues("fake", "false", osType), 1},
		// A failed refresh rotated nothing, whatever the caller says.
		{m.sscd.rotationErrors.WithLabelValues("fake", "false", "Unavailable", osType), 1},
		{m.refresh.WithLabelValues("republish", "rotated"), 1},
		{m.refresh.WithLabelValues("watch", "failed"), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("case %d = %v, want %v", i, got, c.want)
		}
	}
}

// The SSCD series count what the CSI calls did: first publishes (ok and
// failed, with the class's provider once known), unpublishes, and refreshes
// on republish.
func TestSSCDSeriesFromCSICalls(t *testing.T) {
	const interval = 20 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.RotationInterval = interval })
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
	time.Sleep(interval) // let the rotation come due
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	time.Sleep(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	s := e.d.metrics.sscd
	for i, c := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{s.publish.WithLabelValues("test", osType), 1},
		{s.publishErrors.WithLabelValues("nosuch", "InvalidArgument", osType), 1},
		{s.publishErrors.WithLabelValues("", "NotFound", osType), 1}, // no class, no provider
		{s.rotations.WithLabelValues("test", "true", osType), 1},
		{s.rotationErrors.WithLabelValues("test", "false", "Unavailable", osType), 1},
		{s.unpublish.WithLabelValues(osType), 1},
		{s.unpublishErrors.WithLabelValues(osType), 0},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("case %d: %v, want %v", i, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(s.rotationDuration); n != 1 {
		t.Errorf("rotation_reconcile_duration_sec has %d series, want 1", n)
	}
}
