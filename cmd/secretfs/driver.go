package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/internal/kube/events"
	"github.com/secretfs/secretfs/provider/plugin"
)

// driverFlags are the flags of `secretfs driver`, parsed by
// parseDriverFlags and run by runDriver.
type driverFlags struct {
	endpoint       string
	nodeID         string
	driverName     string
	kubeconfig     string
	classDir       string
	rotation       time.Duration
	minRotation    time.Duration
	maxRotation    time.Duration
	maxStale       time.Duration
	healthAddr     string
	metricsAddr    string
	regDir         string
	kubeletDir     string
	pprofAddr      string
	cache          bool
	events         bool
	rotationEvents bool
	healthEvery    time.Duration
	statusSocket   string
	cacheExternal  string
	tmpfsSize      quantityFlag
	limits         limitFlags
	logs           logFlags
	backends       backendFlags
	sync           syncFlags
}

func (f *driverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path, unix:/path or /path (absolute)")
	fs.StringVar(&f.nodeID, "node-id", hostname(), "node id reported to kubelet (the Kubernetes node name)")
	fs.StringVar(&f.driverName, "driver-name", driver.DefaultDriverName, "CSI driver name")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for reading SecretProviderClasses (in-cluster config when empty)")
	fs.StringVar(&f.classDir, "class-dir", "", "read SecretProviderClass YAML files from this directory instead of the API")
	fs.DurationVar(&f.rotation, "rotation-interval", driver.DefaultRotationInterval, "refresh a volume on republish when its last fetch is older than this")
	fs.DurationVar(&f.minRotation, "min-rotation-interval", driver.DefaultMinRotationInterval, "lowest rotation interval a class may set for itself (secretfs.dev/rotationInterval); lower values are raised to it")
	fs.DurationVar(&f.maxRotation, "max-rotation-interval", driver.DefaultMaxRotationInterval, "highest rotation interval a class may set for itself; higher values are lowered to it")
	fs.DurationVar(&f.maxStale, "max-stale-if-error", driver.DefaultMaxStaleIfError, "oldest node-cache content a class's secretfs.dev/staleIfError may give a new pod when its backend is down (0: never)")
	fs.StringVar(&f.healthAddr, "health-addr", defaultHealthAddr, "address for /healthz (empty: off); the manifests set the pod's own IP for kubelet's HTTP probes")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:9809", "address for /metrics (empty: off); the manifests set the pod's own IP, so a scraper reaches it and nothing else listens")
	fs.StringVar(&f.regDir, "registration-dir", "", "kubelet plugin registration directory to register in (empty: rely on node-driver-registrar)")
	fs.StringVar(&f.pprofAddr, "pprof-addr", "", "serve Go's pprof profiles (/debug/pprof/) here: a unix socket (unix:///path) or a loopback host:port; empty: off")
	fs.StringVar(&f.kubeletDir, "kubelet-dir", "/var/lib/kubelet", "kubelet's root directory: after a restart only volumes below it are recovered")
	fs.BoolVar(&f.cache, "cache", true, "share backend results between the volumes of one identity (namespace, service account, secret-ref data, class parameters) on this node, in memory only; false: every volume fetches for itself")
	fs.BoolVar(&f.events, "events", true, "post a Warning SecretRefreshFailed Event on the pod when a refresh of its mounted volume fails (at most one per volume and rotation interval); needs the API server, so ignored with -class-dir and no kubeconfig or in-cluster config")
	fs.BoolVar(&f.rotationEvents, "rotation-events", false, "also post a Normal SecretRotated Event on the pod each time its volume's content changes (one API write per rotation and volume)")
	fs.StringVar(&f.cacheExternal, "cache-external", "", `comma-separated external providers whose answers the node cache shares between the volumes of one identity ("*": all); others fetch per volume, since their answers may differ per pod (a class can opt in or out with parameter secretfs.dev/nodeCache)`)
	fs.DurationVar(&f.healthEvery, "provider-health-interval", plugin.DefaultHealthInterval, "ask every external provider socket for its version this often; an unhealthy provider shows in /healthz, the secretfs_provider_healthy metric and the log (0: off)")
	fs.StringVar(&f.statusSocket, "status-socket", "", "unix socket `secretfs status` reads the volume table from (empty: status.sock next to the CSI socket; off: none); root only (0600)")
	f.tmpfsSize.bytes = driver.DefaultTmpfsSize
	fs.Var(&f.tmpfsSize, "tmpfs-size", "size cap of each volume's tmpfs (a quantity, e.g. 8Mi)")
	f.limits.register(fs)
	f.sync.register(fs)
	f.logs.register(fs)
	f.backends.register(fs)
	f.backends.registerExternal(fs)
	f.backends.registerAllowList(fs, "azure,kubernetes")
}

const driverCmd = "driver"

// parseDriverFlags parses the arguments of `secretfs driver`; ok is false
// when the command should stop with code (after -h or a bad flag).
func parseDriverFlags(args []string, stdout, stderr io.Writer) (f driverFlags, code int, ok bool) {
	fs := newFlagSet(driverCmd, "Run the CSI node plugin: serve CSI Identity and Node on a unix socket.", stdout)
	f.register(fs)
	code, ok = parse(fs, args, stderr)
	fs.Visit(func(fl *flag.Flag) { f.limits.maxProcsSet = f.limits.maxProcsSet || fl.Name == "max-procs" })
	return f, code, ok
}

// config is the driver configuration the flags set; runDriver adds what it
// builds from them (class source, providers, events, hooks, logger,
// metrics registry, node budget).
func (f *driverFlags) config() driver.Config {
	return driver.Config{
		DriverName:          f.driverName,
		NodeID:              f.nodeID,
		TmpfsSize:           f.tmpfsSize.bytes,
		RotationInterval:    f.rotation,
		MinRotationInterval: f.minRotation,
		MaxRotationInterval: f.maxRotation,
		MaxStaleIfError:     staleBound(f.maxStale),
		RecoverUnder:        f.kubeletDir,
		MaxFiles:            f.limits.maxFiles,
		MaxDirs:             f.limits.maxDirs,
		MaxDepth:            f.limits.maxDepth,
		MaxSteps:            f.limits.maxSteps,
		DisableCache:        !f.cache,
		CacheExternal:       splitList(f.cacheExternal),
	}
}

// runDriver runs the CSI node plugin with flags f until SIGINT or SIGTERM.
func runDriver(f driverFlags, stderr io.Writer) int {
	fail := func(code int, format string, args ...any) int {
		return failCmd(stderr, "secretfs "+driverCmd, code, format, args...)
	}
	log, err := f.logs.logger(stderr)
	if err != nil {
		return fail(2, "%v", err)
	}
	if f.nodeID == "" {
		return fail(2, "-node-id is required (the Kubernetes node name)")
	}
	statusPath, err := statusSocketPath(f.statusSocket, f.endpoint)
	if err != nil {
		return fail(2, "-status-socket: %v", err)
	}
	var pprofLn net.Listener
	if f.pprofAddr != "" {
		if pprofLn, err = pprofListener(f.pprofAddr); err != nil {
			return fail(2, "%v", err)
		}
		defer pprofLn.Close()
	}
	if err := f.limits.setProcs(log); err != nil {
		return fail(2, "%v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The API server is needed for classes unless they come from files; the
	// kubernetes backend uses its address when there is one.
	restConfig, err := loadRESTConfig(f.kubeconfig)
	if err != nil {
		if f.classDir == "" || f.kubeconfig != "" {
			return fail(1, "%v", err)
		}
		restConfig = nil // classes from files, and no API server
	}
	var classes class.Source
	if f.classDir != "" {
		classes = class.NewDir(f.classDir)
	} else if classes, err = class.NewAPI(ctx, restConfig); err != nil {
		return fail(1, "watching SecretProviderClasses: %v", err)
	}
	providers, external, err := f.backends.resolver(restConfig, log)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer external.Close()

	var sink driver.EventSink
	if f.events && restConfig != nil {
		rec, err := events.New(restConfig, events.Options{Component: f.driverName, Host: f.nodeID, Rotated: f.rotationEvents})
		if err != nil {
			return fail(1, "%v", err)
		}
		defer rec.Close()
		sink = rec
	} else if f.events {
		log.Info("no API server configured: refresh failures are logged and counted, not posted as Events")
	}

	nodeBudget, err := f.limits.resolve(log)
	if err != nil {
		return fail(1, "%v", err)
	}
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// One node budget for the volumes and what the Secret sync holds of them.
	var sharedBudget *budget.Budget
	if nodeBudget > 0 {
		sharedBudget = budget.New(nodeBudget)
	}
	hooks, closeHooks, err := f.sync.hooks(ctx, restConfig, f.nodeID, sink, f.driverName, sharedBudget, registry, log)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer closeHooks()
	cfg := f.config()
	cfg.Classes, cfg.Providers, cfg.Events, cfg.Hooks = classes, providers, sink, hooks
	cfg.Logger, cfg.Registerer, cfg.Budget = log, registry, sharedBudget
	cfg.FetchBytes = f.limits.inFlight(log)
	d, err := driver.New(cfg)
	if err != nil {
		return fail(1, "%v", err)
	}

	var reporters []driver.HealthReporter
	g, ctx := errgroup.WithContext(ctx)
	if f.healthEvery > 0 {
		health, err := external.Health(plugin.HealthOptions{Interval: f.healthEvery, Logger: log, Registerer: registry})
		if err != nil {
			return fail(1, "%v", err)
		}
		reporters = append(reporters, health)
		g.Go(func() error { health.Run(ctx); return nil })
	}
	g.Go(func() error { return d.Serve(ctx, f.endpoint) })
	if f.healthAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/healthz", d.HealthHandler(reporters...))
		g.Go(func() error { return serveHTTP(ctx, f.healthAddr, mux, log) })
	}
	if f.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
		g.Go(func() error { return serveHTTP(ctx, f.metricsAddr, mux, log) })
	}
	if statusPath != "" {
		g.Go(func() error { return serveStatus(ctx, statusPath, d, log) })
	}
	if pprofLn != nil {
		g.Go(func() error { return serveHTTPOn(ctx, pprofLn, pprofHandler(), log) })
	}
	if f.regDir != "" {
		g.Go(func() error { return registerWithKubelet(ctx, f.regDir, f.driverName, f.endpoint, log) })
	}
	log.Info("secretfs driver starting", "version", versionString(), "driver", f.driverName, "node", f.nodeID, "endpoint", f.endpoint)
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return fail(1, "%v", err)
	}
	return 0
}

func loadRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, errors.New("not running in a cluster and no -kubeconfig given (or use -class-dir to read classes from files)")
	}
	return cfg, nil
}

// hostPort also accepts an IPv6 address followed by ":port" without
// brackets, which is what "$(POD_IP):9809" gives on an IPv6 pod network.
func hostPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if i := strings.LastIndexByte(addr, ':'); i > 0 && net.ParseIP(addr[:i]) != nil {
		return net.JoinHostPort(addr[:i], addr[i+1:])
	}
	return addr
}

// serveHTTP serves handler on addr until ctx is done.
func serveHTTP(ctx context.Context, addr string, handler http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", hostPort(addr))
	if err != nil {
		return err
	}
	return serveHTTPOn(ctx, ln, handler, log)
}

// serveHTTPOn serves handler on ln until ctx is done. A kept-alive
// connection idle for httpIdleTimeout is closed: a client that opens
// connections and never closes them (each one a goroutine, a descriptor
// and its buffers) would otherwise grow the driver for as long as it runs.
func serveHTTPOn(ctx context.Context, ln net.Listener, handler http.Handler, log *slog.Logger) error {
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: httpIdleTimeout}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Info("serving HTTP", "addr", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// httpIdleTimeout is longer than a scrape interval (Prometheus's default is
// a minute), so a scraper keeps its one connection.
const httpIdleTimeout = 2 * time.Minute

// staleBound maps the -max-stale-if-error flag (0: off) to
// Config.MaxStaleIfError (0: the default, negative: off).
func staleBound(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
