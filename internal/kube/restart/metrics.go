package restart

import "github.com/prometheus/client_golang/prometheus"

// Results of a change, the label of secretfs_restarts_total.
const (
	resultRolledOut = "rolled_out" // the template annotation written
	resultCarried   = "carried"    // the workload carried the value already (no write)
	resultEvicted   = "evicted"
	resultGone      = "gone"    // the pod or its controller is gone or going
	resultSkipped   = "skipped" // a Job's pod or another controller kind
	resultFailed    = "failed"  // an API error or a budget's refusal: told
	resultDropped   = "dropped" // the queue was full: told
	// resultSuperseded: a newer change of the pod came while its eviction
	// waited to be tried again; the newer one's job goes on.
	resultSuperseded = "superseded"
	// resultRetrying: an eviction waits to be tried again; not a result
	// yet, never counted.
	resultRetrying = "retrying"
)

// metrics: labels carry outcomes only, never a pod, workload, class or
// namespace.
type metrics struct {
	results *prometheus.CounterVec
	queued  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "restarts_total",
			Help: "Changes of content that asked for a restart, by result: rolled_out (the workload's pod template annotation written), carried (the workload had the value already: another pod or node wrote it), evicted, gone (the pod or its workload is gone), skipped (a Job's pod, or a controller the driver does not restart), failed (an API error, or a disruption budget's refusal after the retries), dropped (the queue was full), superseded (a newer change of the pod came while its eviction waited to be retried).",
		}, []string{"result"}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "secretfs", Name: "restart_jobs",
			Help: "Restart jobs queued or running on this node.",
		}),
	}
	for _, r := range []string{resultRolledOut, resultCarried, resultEvicted, resultGone, resultSkipped, resultFailed, resultDropped, resultSuperseded} {
		m.results.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.results, m.queued} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) count(result string) { m.results.WithLabelValues(result).Inc() }
