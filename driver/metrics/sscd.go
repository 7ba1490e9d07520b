package metrics

import (
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// sscdMetrics are the series the Secrets Store CSI Driver (1.6) exports,
// under the same names and labels, so that dashboards and alerts written for
// it keep working after a switch. Names are those of its OpenTelemetry
// instruments with the Prometheus exporter's _total suffix on counters (not
// those on its metrics page, which is out of date). They are exported next to
// ours, never instead of them.
//
// What each counts here, where SSCD's meaning and ours line up:
//   - node_publish_total: NodePublishVolume calls that mounted a volume (a
//     first publish); republish refreshes are rotation reconciles, below.
//   - node_publish_error_total: failed first publishes. error_type is the gRPC
//     code the driver returned (SSCD puts its internal reason there).
//   - node_unpublish_total, node_unpublish_error_total: NodeUnpublishVolume.
//   - rotation_reconcile_total{rotated}: refreshes of a mounted volume (on
//     republish or a backend watch) that succeeded, rotated="true" when the
//     content changed; rotation_reconcile_error_total: refreshes that failed;
//     rotation_reconcile_duration_sec: how long each refresh took.
//
// os_type is runtime.GOOS, as in SSCD. provider is bounded like ours.
type sscdMetrics struct {
	publish          *prometheus.CounterVec // provider, os_type
	publishErrors    *prometheus.CounterVec // provider, error_type, os_type
	unpublish        *prometheus.CounterVec // os_type
	unpublishErrors  *prometheus.CounterVec // os_type
	rotations        *prometheus.CounterVec // provider, rotated, os_type
	rotationErrors   *prometheus.CounterVec // provider, rotated, error_type, os_type
	rotationDuration *prometheus.HistogramVec
}

const osType = runtime.GOOS

func newSSCDMetrics() *sscdMetrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help + " (Secrets Store CSI Driver compatible)."}, labels)
	}
	s := &sscdMetrics{
		publish:         counter("node_publish_total", "Volumes mounted by NodePublishVolume", "provider", "os_type"),
		publishErrors:   counter("node_publish_error_total", "NodePublishVolume calls that failed to mount a volume", "provider", "error_type", "os_type"),
		unpublish:       counter("node_unpublish_total", "NodeUnpublishVolume calls that succeeded", "os_type"),
		unpublishErrors: counter("node_unpublish_error_total", "NodeUnpublishVolume calls that failed", "os_type"),
		rotations:       counter("rotation_reconcile_total", "Refreshes of mounted volumes that succeeded, by whether the content changed", "provider", "rotated", "os_type"),
		rotationErrors:  counter("rotation_reconcile_error_total", "Refreshes of mounted volumes that failed", "provider", "rotated", "error_type", "os_type"),
		rotationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "rotation_reconcile_duration_sec", Help: "Seconds a refresh of a mounted volume took (Secrets Store CSI Driver compatible).",
			Buckets: buckets,
		}, []string{"os_type"}),
	}
	// The unpublish series have no label but os_type: both exist from the
	// start at 0, so a scrape (and a test) tells "none failed" from "no such
	// series".
	s.unpublish.WithLabelValues(osType)
	s.unpublishErrors.WithLabelValues(osType)
	return s
}

func (s *sscdMetrics) register(reg prometheus.Registerer) error {
	for _, c := range []**prometheus.CounterVec{&s.publish, &s.publishErrors, &s.unpublish, &s.unpublishErrors, &s.rotations, &s.rotationErrors} {
		if err := register(reg, c); err != nil {
			return err
		}
	}
	return register(reg, &s.rotationDuration)
}

// errorType is the error_type label of err: its gRPC code, a bounded set.
func errorType(err error) string {
	return status.Code(err).String()
}

// Published counts a first publish of a volume of provider.
func (m *Metrics) Published(provider string, err error) {
	provider = m.providerLabel(provider)
	if err != nil {
		m.sscd.publishErrors.WithLabelValues(provider, errorType(err), osType).Inc()
		return
	}
	m.sscd.publish.WithLabelValues(provider, osType).Inc()
}

// Unpublished counts an unpublish.
func (m *Metrics) Unpublished(err error) {
	if err != nil {
		m.sscd.unpublishErrors.WithLabelValues(osType).Inc()
		return
	}
	m.sscd.unpublish.WithLabelValues(osType).Inc()
}

// Refreshed counts a refresh of a mounted volume in our series and SSCD's.
// trigger is republish, watch or requested; changed says the content was rotated.
func (m *Metrics) Refreshed(provider, trigger string, changed bool, err error, took time.Duration) {
	result := "unchanged"
	switch {
	case err != nil:
		result = "failed"
	case changed:
		result = "rotated"
	}
	m.Refresh.WithLabelValues(trigger, result).Inc()
	provider = m.providerLabel(provider)
	rotated := strconv.FormatBool(changed && err == nil)
	if err != nil {
		m.sscd.rotationErrors.WithLabelValues(provider, rotated, errorType(err), osType).Inc()
	} else {
		m.sscd.rotations.WithLabelValues(provider, rotated, osType).Inc()
	}
	m.sscd.rotationDuration.WithLabelValues(osType).Observe(took.Seconds())
}
