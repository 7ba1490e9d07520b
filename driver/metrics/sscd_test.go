package metrics

import (
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
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	failed := status.Error(codes.NotFound, "no such class")
	m.Published("azure", nil)
	m.Published("azure", failed)
	m.Unpublished(nil)
	m.Unpublished(errors.New("busy"))
	m.Refreshed("azure", "republish", true, nil, time.Millisecond)
	m.Refreshed("azure", "watch", false, failed, time.Millisecond)

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
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.Published("fake", nil)
	m.Published("fake", nil)
	m.Published("fake", status.Error(codes.PermissionDenied, "denied"))
	m.Refreshed("fake", "republish", true, nil, 0)
	m.Refreshed("fake", "republish", false, nil, 0)
	m.Refreshed("fake", "watch", true, status.Error(codes.Unavailable, "down"), 0)
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
		{m.Refresh.WithLabelValues("republish", "rotated"), 1},
		{m.Refresh.WithLabelValues("watch", "failed"), 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("case %d = %v, want %v", i, got, c.want)
		}
	}
}
