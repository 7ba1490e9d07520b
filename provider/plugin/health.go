package plugin

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/secretfs/secretfs/provider"
)

// DefaultHealthInterval is how often Health asks each provider for its version.
const DefaultHealthInterval = time.Minute

// maxTrackedProviders bounds the providers Health follows (and so its
// metric labels). Only sockets in the admin's provider directories are
// followed, never names that classes make up.
const maxTrackedProviders = 32

// HealthOptions configure Client.Health.
type HealthOptions struct {
	// Interval between rounds of checks; zero means DefaultHealthInterval.
	Interval time.Duration
	// Logger receives state changes (default slog.Default()).
	Logger *slog.Logger
	// Registerer receives secretfs_provider_healthy and
	// secretfs_provider_health_checks_total; nil registers none.
	Registerer prometheus.Registerer
}

// ProviderHealth is the last known state of one external provider.
type ProviderHealth struct {
	Name    string
	Healthy bool
	// Since is when the provider entered its current state.
	Since time.Time
	// Version is its last answer to Version (zero until it answered).
	Version VersionInfo
	// Err says why it is unhealthy; it never holds a secret (the Version
	// call carries none).
	Err string
}

// Health checks the external providers on this node: every provider
// socket in the client's directories is asked for its Version once per
// interval. A provider that stops answering (or whose socket goes away) is
// reported in WriteHealth, in the secretfs_provider_healthy metric and in
// the log; it never makes the driver unready, so volumes of the other
// providers keep working.
type Health struct {
	c        *Client
	interval time.Duration
	log      *slog.Logger

	healthy *prometheus.GaugeVec
	checks  *prometheus.CounterVec

	mu         sync.Mutex
	state      map[string]*ProviderHealth
	overflowed bool // the "too many providers" warning was logged
	rounds     int
}

// Health returns a checker for the providers of c; call Run to start it.
func (c *Client) Health(opts HealthOptions) (*Health, error) {
	if opts.Interval <= 0 {
		opts.Interval = DefaultHealthInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	h := &Health{
		c: c, interval: opts.Interval, log: opts.Logger, state: map[string]*ProviderHealth{},
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "secretfs", Name: "provider_healthy",
			Help: "1 when the external provider answered its last health check (a Version call), 0 when it did not.",
		}, []string{"provider"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "secretfs", Name: "provider_health_checks_total",
			Help: "Health checks of external providers by provider and result (ok, failed).",
		}, []string{"provider", "result"}),
	}
	if opts.Registerer != nil {
		for _, col := range []prometheus.Collector{h.healthy, h.checks} {
			if err := opts.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("registering provider health metrics: %w", err)
			}
		}
	}
	return h, nil
}

// Run checks now and then once per interval until ctx is done.
func (h *Health) Run(ctx context.Context) {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		h.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Check runs one round: every provider socket found now, and every
// provider seen before, is asked for its version, concurrently.
func (h *Health) Check(ctx context.Context) {
	names := h.targets()
	type result struct {
		name string
		v    VersionInfo
		err  error
	}
	results := make(chan result, len(names))
	for _, n := range names {
		go func() {
			v, err := h.c.Version(ctx, n)
			results <- result{n, v, err}
		}()
	}
	now := time.Now()
	for range names {
		r := <-results
		h.record(now, r.name, r.v, r.err)
	}
	h.mu.Lock()
	h.rounds++
	h.mu.Unlock()
}

// targets lists the providers to check: sockets in the directories (the
// first directory that has a name wins, as for Fetch) and those already
// followed, at most maxTrackedProviders.
func (h *Health) targets() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(h.state))
	for n := range h.state {
		names = append(names, n)
	}
	var skipped []string
	for _, n := range h.c.socketNames() {
		if _, ok := h.state[n]; ok {
			continue
		}
		if len(names) >= maxTrackedProviders {
			skipped = append(skipped, n)
			continue
		}
		names = append(names, n)
		h.state[n] = &ProviderHealth{Name: n}
	}
	if len(skipped) > 0 && !h.overflowed {
		h.overflowed = true
		h.log.Warn("more provider sockets than the health check follows; these are not checked", "limit", maxTrackedProviders, "skipped", skipped)
	}
	slices.Sort(names)
	return names
}

func (h *Health) record(now time.Time, name string, v VersionInfo, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state[name]
	first := st.Since.IsZero()
	was := st.Healthy
	if err == nil {
		st.Healthy, st.Version, st.Err = true, v, ""
		h.checks.WithLabelValues(name, "ok").Inc()
		h.healthy.WithLabelValues(name).Set(1)
	} else {
		st.Healthy, st.Err = false, err.Error()
		h.checks.WithLabelValues(name, "failed").Inc()
		h.healthy.WithLabelValues(name).Set(0)
	}
	if first || was != st.Healthy {
		st.Since = now
		switch {
		case st.Healthy:
			h.log.Info("external provider is healthy", "provider", name, "runtime", v.RuntimeName, "version", v.RuntimeVersion, "protocol", v.Protocol)
		default:
			h.log.Warn("external provider is unhealthy: it did not answer a Version call; its volumes cannot be published or refreshed until it does", "provider", name, "err", st.Err)
		}
	}
}

// Providers returns the state of every provider followed, sorted by name.
// Providers not checked yet are left out.
func (h *Health) Providers() []ProviderHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]ProviderHealth, 0, len(h.state))
	for _, st := range h.state {
		if !st.Since.IsZero() {
			out = append(out, *st)
		}
	}
	slices.SortFunc(out, func(a, b ProviderHealth) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Rounds is the number of completed rounds of checks.
func (h *Health) Rounds() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rounds
}

// WriteHealth writes one line per provider for the driver's /healthz:
// "provider NAME: ok (RUNTIME VERSION)" or "provider NAME: unhealthy since
// TIME: REASON".
func (h *Health) WriteHealth(w io.Writer) {
	for _, p := range h.Providers() {
		if p.Healthy {
			fmt.Fprintf(w, "provider %s: ok (%s %s)\n", p.Name, oneLine(p.Version.RuntimeName), oneLine(p.Version.RuntimeVersion))
			continue
		}
		fmt.Fprintf(w, "provider %s: unhealthy since %s: %s\n", p.Name, p.Since.UTC().Format(time.RFC3339), oneLine(p.Err))
	}
}

// oneLine keeps provider-supplied text on one line of the health report.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, provider.Clip(s, 1024))
}

// socketNames lists the provider names that have a socket in the client's
// directories, each once, in directory order.
func (c *Client) socketNames() []string {
	var names []string
	seen := map[string]bool{}
	for _, dir := range c.opts.SocketDirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			name, ok := strings.CutSuffix(e.Name(), ".sock")
			if !ok || e.Type()&os.ModeSocket == 0 || !ValidName(name) || seen[name] {
				continue
			}
			seen[name] = true
			names = append(names, name)
		}
	}
	return names
}
