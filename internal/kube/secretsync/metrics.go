package secretsync

import (
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics: labels carry providers, verbs and outcomes only, never the name
// of a Secret, class, pod or namespace.
type metrics struct {
	// SSCD's series, same names and labels, so its dashboards keep working.
	synced   *prometheus.CounterVec   // sync_k8s_secret_total{provider,os_type}
	duration *prometheus.HistogramVec // k8s_secret_duration_sec{os_type}
	// Ours: every API request the sync makes, and the outcome of each sync.
	requests *prometheus.CounterVec // verb, result
	results  *prometheus.CounterVec // result

	mu        sync.Mutex
	providers map[string]bool
}

// maxProviderLabels bounds the provider label (external provider names come
// from classes); beyond it they count as "other".
const maxProviderLabels = 32

var osType = runtime.GOOS

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		synced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sync_k8s_secret_total",
			Help: "Kubernetes Secrets written from mounted objects (spec.secretObjects), as the Secrets Store CSI Driver counts them.",
		}, []string{"provider", "os_type"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "k8s_secret_duration_sec",
			Help:    "Duration of one Kubernetes Secret sync (the API requests of one write), as the Secrets Store CSI Driver measures it.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"os_type"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "secret_sync_requests_total",
			Help: "API requests of the Secret sync by verb (create, patch, get, get-pod: the read of a pod for its controller) and result (ok, or the API error reason).",
		}, []string{"verb", "result"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "secret_syncs_total",
			Help: "Secret syncs by result: written, unchanged (no request needed), conflict (a Secret the driver does not manage), invalid (the class's secretObjects cannot be built), refused (the class asks for a type or key a class may not), failed (retried with back-off).",
		}, []string{"result"}),
		providers: map[string]bool{},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.synced, m.duration, m.requests, m.results} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) written(provider string, d time.Duration) {
	m.synced.WithLabelValues(m.providerLabel(provider), osType).Inc()
	m.duration.WithLabelValues(osType).Observe(d.Seconds())
	m.results.WithLabelValues("written").Inc()
}

func (m *metrics) providerLabel(p string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.providers[p] {
		return p
	}
	if len(m.providers) >= maxProviderLabels {
		return "other"
	}
	m.providers[p] = true
	return p
}
