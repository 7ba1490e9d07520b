// Package driver is the secretfs CSI node plugin: the Identity and Node
// services, the lifecycle of each volume (publish, refresh, unpublish), and
// recovery of mounted volumes after a restart.
//
// A volume is a CSI ephemeral inline volume. On first publish the driver
// looks up the pod's SecretProviderClass, asks the class's provider for the
// files, mounts a fresh tmpfs at the target path and writes the files with an
// atomic writer. Republishes (CSIDriver requiresRepublish) refresh the files
// when the volume's own last fetch is older than Config.RotationInterval.
// Nothing is ever written outside the tmpfs.
package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/cache"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/driver/metrics"
	"github.com/secretfs/secretfs/provider"
)

// Version is reported by GetPluginInfo; set with
// -ldflags "-X github.com/secretfs/secretfs/driver.Version=v1.2.3".
var Version = "dev"

// Defaults for zero Config fields.
const (
	DefaultDriverName       = "csi.secretfs.dev"
	DefaultTmpfsSize        = 8 << 20
	DefaultRotationInterval = 2 * time.Minute
)

// Per-volume limits on the shape of a file set (Config.MaxFiles, MaxDirs,
// MaxDepth; see limits.go).
const (
	DefaultMaxFiles = provider.DefaultMaxFiles
	DefaultMaxDirs  = 1024
	DefaultMaxDepth = 16
)

// Defaults for the bounds of the class settings.
const (
	DefaultMinRotationInterval = 10 * time.Second
	DefaultMaxRotationInterval = 24 * time.Hour
	DefaultMaxStaleIfError     = time.Hour
)

// Config configures a Driver.
type Config struct {
	DriverName string // default "csi.secretfs.dev"
	NodeID     string // required
	// Classes is where SecretProviderClasses come from.
	Classes class.Source
	// Providers resolves a class's spec.provider; an unknown name returns an
	// error, reported to kubelet as InvalidArgument naming the provider.
	Providers func(name string) (provider.Provider, error)
	// TmpfsSize caps the content of one volume in bytes (default 8 MiB). The
	// tmpfs itself is mounted with twice that plus a little, so that the old
	// and the new generation both fit while a rotation swaps them.
	TmpfsSize        int64
	RotationInterval time.Duration // default 2m
	// Now is the rotation clock: when a volume was fetched and tried, when
	// it is due, the age of cached answers (time.Now when nil). Durations
	// reported in logs and metrics always use the real clock.
	Now func() time.Time
	// MinRotationInterval and MaxRotationInterval bound a class's own
	// interval (secretfs.dev/rotationInterval); defaults 10s and 24h.
	MinRotationInterval, MaxRotationInterval time.Duration
	// MaxStaleIfError bounds a class's secretfs.dev/staleIfError: the oldest
	// cached content a new volume may get when its backend is down.
	// Default 1h; negative: never.
	MaxStaleIfError time.Duration
	Logger          *slog.Logger // default slog.Default()
	// Registerer receives the driver's metrics; nil registers none.
	Registerer prometheus.Registerer
	// RecoverUnder limits restart recovery to secretfs mounts below this
	// directory (for example kubelet's root dir), so a driver and a local
	// agent on one host never adopt each other's volumes. Empty: all.
	RecoverUnder string
	// DisableCache turns the node cache off: every volume fetches for
	// itself (one backend request per volume and rotation).
	DisableCache bool
	// CacheExternal names the external providers whose answers the node
	// cache shares ("*": all). Others are fetched per volume unless their
	// class sets secretfs.dev/nodeCache: "true" (see Driver.shareable). Built-in
	// backends are always shared, unless a class sets it "false".
	CacheExternal []string
	// Events receives what the pod's owner should see on the pod: failed
	// refreshes of a mounted volume (at most one per volume and rotation
	// interval) and rotations. Nil: none are reported beyond logs and
	// metrics. Never called on the publish path: kubelet reports publish
	// errors on the pod itself.
	Events EventSink
	// Hooks are told when a volume's content changed and when a volume is
	// gone (see package driver/hook).
	Hooks []hook.Hook
	// MaxFiles, MaxDirs and MaxDepth cap one volume's file set: files,
	// directories, and directories on a file's path (defaults
	// DefaultMaxFiles, DefaultMaxDirs, DefaultMaxDepth).
	MaxFiles, MaxDirs, MaxDepth int
	// MaxSteps caps the steps of one volume's computation over its
	// class and values (key paths, templates; see budget.Work). Default
	// budget.DefaultMaxSteps.
	MaxSteps int
	// NodeBudget caps the bytes all volumes on the node hold together: the
	// kernel charges their tmpfs pages to the driver's memory cgroup (see
	// package driver/budget). 0: no node-wide cap.
	NodeBudget int64
	// FetchBytes bounds the bytes all fetches of the node read from
	// backends and hold at once (provider.InFlight), raised to one
	// volume's wire allowance if below it. 0: no bound.
	FetchBytes int64
	// Budget, when set, is the node budget itself and NodeBudget is not
	// used: the caller shares it with hooks that hold memory for volumes
	// (the Secret sync charges what it holds of their files to it).
	Budget *budget.Budget
	// Owner, when set, makes every volume one local user's (the local
	// agent); nil: the Kubernetes ownership (root, the pod's fsGroup).
	Owner *Owner
}

// EventSink reports refresh outcomes on the pod whose volume it was; see
// events.New. Its methods must not block.
type EventSink interface {
	// RefreshFailed: the volume keeps its last good content. err's message
	// names what failed and never holds a secret value or a token.
	RefreshFailed(pod provider.Pod, class string, err error)
	// Rotated: a refresh swapped in files with new content.
	Rotated(pod provider.Pod, class string)
}

// ContentEventSink is implemented by an EventSink that also reports what a
// class's content settings did on the pod (the API events do).
type ContentEventSink interface {
	// Omitted: optional objects were not found and are not in the volume.
	Omitted(pod provider.Pod, class string, objects []string)
	// ServedStale: the backend failed with err; a new volume got the node
	// cache's content of the same identity and class, fetched age ago.
	ServedStale(pod provider.Pod, class string, age time.Duration, err error)
}

// Driver is the CSI node plugin. It implements csi.IdentityServer and
// csi.NodeServer, so an in-process caller can use it without a socket.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	name    string
	nodeID  string
	classes class.Source
	resolve func(string) (provider.Provider, error)
	limits  volumeLimits       // per volume; MaxBytes is Config.TmpfsSize
	budget  *budget.Budget     // nil: no node budget
	flights *provider.InFlight // nil: no bound of fetches in flight
	// mountBytes is the tmpfs size: room for two generations (old and new
	// during a swap) plus the metadata file.
	mountBytes   int64
	recoverUnder string
	rotation     rotationPolicy
	now          func() time.Time // the rotation clock (Config.Now)
	log          *slog.Logger
	metrics      *metrics.Metrics
	events       EventSink // nil: none
	hooks        []hook.Hook
	owner        *Owner // nil: Kubernetes ownership

	// Bounds of a class's own settings (class.Settings).
	minInterval, maxInterval, maxStale time.Duration

	// cache shares backend results between volumes of one identity; nil
	// when disabled. keyer derives its keys.
	cache *cache.Cache
	keyer *cache.Keyer
	// cacheExternal: the external providers the admin lets the cache share.
	cacheExternal map[string]bool

	locks volumeLocks
	// requested: refreshes asked for by class annotation or command
	// (refreshnow.go); done is closed by Close.
	requested refreshRequests
	done      chan struct{}

	mu   sync.Mutex
	vols map[string]*volume // by volume id

	status statusBoard // what `secretfs status` shows (status.go, noted in node.go)

	recovered atomic.Bool
	serving   atomic.Bool
	closed    atomic.Bool
}

var (
	_ csi.IdentityServer = (*Driver)(nil)
	_ csi.NodeServer     = (*Driver)(nil)
)

// New creates a Driver and recovers the volumes it mounted before a restart
// from /proc/self/mountinfo and the metadata file in each tmpfs.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("driver: NodeID is required")
	}
	if cfg.Classes == nil {
		return nil, errors.New("driver: Classes is required")
	}
	if cfg.Providers == nil {
		return nil, errors.New("driver: Providers is required")
	}
	if cfg.DriverName == "" {
		cfg.DriverName = DefaultDriverName
	}
	if cfg.TmpfsSize == 0 {
		cfg.TmpfsSize = DefaultTmpfsSize
	}
	if cfg.TmpfsSize < 4096 {
		return nil, fmt.Errorf("driver: TmpfsSize %d is below one page (4096 bytes)", cfg.TmpfsSize)
	}
	if cfg.RotationInterval == 0 {
		cfg.RotationInterval = DefaultRotationInterval
	}
	if cfg.RotationInterval < 0 {
		return nil, fmt.Errorf("driver: RotationInterval %v is negative", cfg.RotationInterval)
	}
	if cfg.MinRotationInterval == 0 {
		cfg.MinRotationInterval = DefaultMinRotationInterval
	}
	if cfg.MaxRotationInterval == 0 {
		cfg.MaxRotationInterval = DefaultMaxRotationInterval
	}
	if cfg.MinRotationInterval < 0 || cfg.MaxRotationInterval < cfg.MinRotationInterval {
		return nil, fmt.Errorf("driver: rotation interval bounds [%v, %v] are not a range", cfg.MinRotationInterval, cfg.MaxRotationInterval)
	}
	if cfg.MaxStaleIfError == 0 {
		cfg.MaxStaleIfError = DefaultMaxStaleIfError
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	lim := volumeLimits{MaxFiles: cfg.MaxFiles, MaxDirs: cfg.MaxDirs, MaxDepth: cfg.MaxDepth, MaxBytes: cfg.TmpfsSize, MaxSteps: cfg.MaxSteps}
	for _, l := range []struct {
		v    *int
		def  int
		name string
	}{{&lim.MaxFiles, DefaultMaxFiles, "MaxFiles"}, {&lim.MaxDirs, DefaultMaxDirs, "MaxDirs"}, {&lim.MaxDepth, DefaultMaxDepth, "MaxDepth"}, {&lim.MaxSteps, budget.DefaultMaxSteps, "MaxSteps"}} {
		if *l.v == 0 {
			*l.v = l.def
		}
		if *l.v < 1 {
			return nil, fmt.Errorf("driver: %s %d is below 1", l.name, *l.v)
		}
	}
	if cfg.NodeBudget < 0 {
		return nil, fmt.Errorf("driver: NodeBudget %d is negative", cfg.NodeBudget)
	}
	if cfg.Owner != nil {
		if err := cfg.Owner.validate(); err != nil {
			return nil, err
		}
	}
	m, err := metrics.New(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("driver: registering metrics: %w", err)
	}
	d := &Driver{
		name:         cfg.DriverName,
		nodeID:       cfg.NodeID,
		classes:      cfg.Classes,
		resolve:      cfg.Providers,
		limits:       lim,
		mountBytes:   2*cfg.TmpfsSize + 64<<10,
		recoverUnder: cfg.RecoverUnder,
		rotation:     newRotationPolicy(cfg.RotationInterval),
		now:          cfg.Now,
		minInterval:  cfg.MinRotationInterval,
		maxInterval:  cfg.MaxRotationInterval,
		maxStale:     max(cfg.MaxStaleIfError, 0),
		log:          cfg.Logger,
		metrics:      m,
		events:       cfg.Events,
		hooks:        cfg.Hooks,
		owner:        cfg.Owner,
		vols:         map[string]*volume{},
		done:         make(chan struct{}),
	}
	if d.now == nil {
		d.now = time.Now
	}
	switch {
	case cfg.Budget != nil:
		d.budget = cfg.Budget
	case cfg.NodeBudget > 0:
		d.budget = budget.New(cfg.NodeBudget)
	}
	if d.budget != nil {
		d.budget.Observe(func(used int64) { m.BudgetUsed.Set(float64(used)) })
	}
	if cfg.FetchBytes > 0 {
		// Never below one volume's own allowance: a fetch alone on the node
		// meets its own limit (ResourceExhausted) before the node's.
		d.flights = provider.NewInFlight(max(cfg.FetchBytes, provider.Limits{MaxBytes: lim.MaxBytes}.WireBytes()))
	}
	d.cacheExternal = map[string]bool{}
	for _, name := range cfg.CacheExternal {
		d.cacheExternal[name] = true
	}
	if !cfg.DisableCache {
		d.keyer = cache.NewKeyer()
		d.cache = cache.New(cache.Options{MaxAge: d.rotation.CacheMaxAge(), Timeout: d.rotation.Timeout, Now: d.now})
	}
	d.recover()
	d.recovered.Store(true)
	if rr, ok := cfg.Classes.(RefreshRequested); ok {
		if err := rr.OnRefreshRequested(d.classRefreshRequested); err != nil {
			return nil, fmt.Errorf("driver: watching for requested refreshes: %w", err)
		}
	}
	return d, nil
}

// Close stops all provider watches and wipes the node cache. Mounted
// volumes stay mounted: a new Driver finds them again.
func (d *Driver) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	close(d.done)
	d.mu.Lock()
	vols := make([]*volume, 0, len(d.vols))
	for _, v := range d.vols {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	for _, v := range vols {
		if d.locks.Lock(v.id, nil) {
			d.stopWatch(v)
			d.locks.Unlock(v.id)
		}
	}
	if d.cache != nil {
		d.cache.Purge()
	}
	return nil
}

// ready reports whether the driver can serve publishes: recovery is done
// and the gRPC server is accepting calls.
func (d *Driver) ready() bool {
	return d.recovered.Load() && d.serving.Load() && !d.closed.Load()
}

// logAttrs is slog.Logger.LogAttrs without the caller's program counter,
// for the lines every volume logs (published, unpublished): the counter is
// read only by a handler with AddSource, which the driver's logger never
// has, and runtime.Callers was half of what such a line cost.
func logAttrs(ctx context.Context, l *slog.Logger, level slog.Level, msg string, attrs ...slog.Attr) {
	if !l.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(time.Now(), level, msg, 0)
	r.AddAttrs(attrs...)
	_ = l.Handler().Handle(ctx, r)
}
