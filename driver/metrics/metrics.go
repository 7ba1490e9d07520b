// Package metrics holds the driver's Prometheus series: its own
// (secretfs_*) and those of the Secrets Store CSI Driver (sscd.go).
package metrics

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/cache"
)

// Metrics are the driver's series. Labels carry operations, gRPC codes and
// outcomes only: never a secret, a class, a pod or a namespace name.
type Metrics struct {
	Ops      *prometheus.CounterVec   // operation, code
	Duration *prometheus.HistogramVec // operation
	Mounted  prometheus.Gauge
	Refresh  *prometheus.CounterVec   // trigger, result
	Fetches  *prometheus.CounterVec   // provider, code
	FetchDur *prometheus.HistogramVec // provider
	Watches  *prometheus.CounterVec   // result

	Cache        *prometheus.CounterVec // result
	CacheGets    [4]prometheus.Counter  // by cache.Outcome
	CacheEntries prometheus.Gauge
	BudgetUsed   prometheus.Gauge // bytes the node's volumes hold (driver/budget)

	providersMu sync.Mutex
	providers   map[string]bool // provider label values in use

	sscd *sscdMetrics // the Secrets Store CSI Driver's series (sscd.go)
}

// maxProviderLabels bounds the provider label: external provider names come
// from classes, so beyond this many distinct names they count as "other".
const maxProviderLabels = 32

// buckets span 1 ms to 2 min: a cached publish takes milliseconds, a slow
// backend up to kubelet's timeout.
var buckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// New makes the series and registers them with reg (nil: none).
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "node_operations_total",
			Help: "CSI node operations (publish, republish, unpublish) by gRPC result code.",
		}, []string{"operation", "code"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "secretfs", Name: "node_operation_duration_seconds",
			Help: "Latency of CSI node operations.", Buckets: buckets,
		}, []string{"operation"}),
		Mounted: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "secretfs", Name: "volumes_mounted",
			Help: "Volumes currently mounted by this driver.",
		}),
		Refresh: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "volume_refreshes_total",
			Help: "Refreshes of mounted volumes by trigger (republish, watch) and result (rotated, unchanged, failed).",
		}, []string{"trigger", "result"}),
		Fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "provider_fetches_total",
			Help: "Backend requests (provider fetches, cache misses) by provider and gRPC result code.",
		}, []string{"provider", "code"}),
		FetchDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "secretfs", Name: "provider_fetch_duration_seconds",
			Help: "Latency of provider fetches, by provider.", Buckets: buckets,
		}, []string{"provider"}),
		Watches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "provider_watches_total",
			Help: "Provider watches started, by result (started, failed).",
		}, []string{"result"}),
		Cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "cache_requests_total",
			Help: "Node cache lookups by result: hit (fresh entry), miss (went to the backend), collapsed (joined a backend request in flight), stale (the backend was down; a new volume got the last good result, staleIfError).",
		}, []string{"result"}),
		CacheEntries: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "secretfs", Name: "cache_entries",
			Help: "Node cache entries (one per identity and object set in use on the node).",
		}),
		BudgetUsed: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "secretfs", Name: "node_budget_used_bytes",
			Help: "Bytes the volumes on this node hold against the node budget (--node-budget): tmpfs pages, metadata and cached content.",
		}),
		providers: map[string]bool{},
		sscd:      newSSCDMetrics(),
	}
	if reg == nil {
		m.curry()
		return m, nil
	}
	if err := register(reg, &m.Ops); err != nil {
		return nil, err
	}
	if err := register(reg, &m.Duration); err != nil {
		return nil, err
	}
	if err := register(reg, &m.Mounted); err != nil {
		return nil, err
	}
	if err := register(reg, &m.Refresh); err != nil {
		return nil, err
	}
	if err := register(reg, &m.Fetches); err != nil {
		return nil, err
	}
	if err := register(reg, &m.FetchDur); err != nil {
		return nil, err
	}
	if err := register(reg, &m.Watches); err != nil {
		return nil, err
	}
	if err := register(reg, &m.Cache); err != nil {
		return nil, err
	}
	if err := register(reg, &m.BudgetUsed); err != nil {
		return nil, err
	}
	if err := register(reg, &m.CacheEntries); err != nil {
		return nil, err
	}
	if err := m.sscd.register(reg); err != nil {
		return nil, err
	}
	m.curry()
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

// Observe counts a CSI node operation op that started at start.
func (m *Metrics) Observe(op string, start time.Time, err error) {
	m.Ops.WithLabelValues(op, status.Code(err).String()).Inc()
	m.Duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// curry resolves the label values of hot counters once.
func (m *Metrics) curry() {
	for _, o := range []cache.Outcome{cache.Miss, cache.Hit, cache.Collapsed, cache.Stale} {
		m.CacheGets[o] = m.Cache.WithLabelValues(o.String())
	}
}

// Fetched counts one backend request.
func (m *Metrics) Fetched(provider string, code codes.Code, took time.Duration) {
	provider = m.providerLabel(provider)
	m.Fetches.WithLabelValues(provider, code.String()).Inc()
	m.FetchDur.WithLabelValues(provider).Observe(took.Seconds())
}

// providerLabel bounds the provider label: external provider names come from
// classes, so beyond maxProviderLabels distinct names they count as "other".
func (m *Metrics) providerLabel(provider string) string {
	m.providersMu.Lock()
	defer m.providersMu.Unlock()
	if !m.providers[provider] {
		if len(m.providers) >= maxProviderLabels {
			return "other"
		}
		m.providers[provider] = true
	}
	return provider
}
