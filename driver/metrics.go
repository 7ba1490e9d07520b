package driver

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// Labels carry operations, gRPC codes and outcomes only: never a secret,
// a class, a pod or a namespace name.
type metrics struct {
	ops      *prometheus.CounterVec   // operation, code
	duration *prometheus.HistogramVec // operation
	mounted  prometheus.Gauge
	refresh  *prometheus.CounterVec // trigger, result
	fetches  *prometheus.CounterVec // code
	fetchDur prometheus.Histogram
	watches  *prometheus.CounterVec // result
}

// buckets span 1 ms to 2 min: a cached publish takes milliseconds, a slow
// backend up to kubelet's timeout.
var buckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "node_operations_total",
			Help: "CSI node operations (publish, republish, unpublish) by gRPC result code.",
		}, []string{"operation", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "secretfs", Name: "node_operation_duration_seconds",
			Help: "Latency of CSI node operations.", Buckets: buckets,
		}, []string{"operation"}),
		mounted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "secretfs", Name: "volumes_mounted",
			Help: "Volumes currently mounted by this driver.",
		}),
		refresh: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "volume_refreshes_total",
			Help: "Refreshes of mounted volumes by trigger (republish, watch) and result (rotated, unchanged, failed).",
		}, []string{"trigger", "result"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "provider_fetches_total",
			Help: "Provider fetches by gRPC result code.",
		}, []string{"code"}),
		fetchDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "secretfs", Name: "provider_fetch_duration_seconds",
			Help: "Latency of provider fetches.", Buckets: buckets,
		}),
		watches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "provider_watches_total",
			Help: "Provider watches started, by result (started, failed).",
		}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	if err := register(reg, &m.ops); err != nil {
		return nil, err
	}
	if err := register(reg, &m.duration); err != nil {
		return nil, err
	}
	if err := register(reg, &m.mounted); err != nil {
		return nil, err
	}
	if err := register(reg, &m.refresh); err != nil {
		return nil, err
	}
	if err := register(reg, &m.fetches); err != nil {
		return nil, err
	}
	if err := register(reg, &m.fetchDur); err != nil {
		return nil, err
	}
	if err := register(reg, &m.watches); err != nil {
		return nil, err
	}
	return m, nil
}

// register adds c to reg; when an identical collector is already there (a
// second Driver in one process, as after an in-process restart) it reuses it.
func register[C prometheus.Collector](reg prometheus.Registerer, c *C) error {
	err := reg.Register(*c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			*c = existing
			return nil
		}
	}
	return err
}

func (m *metrics) observe(op string, start time.Time, err error) {
	m.ops.WithLabelValues(op, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}
