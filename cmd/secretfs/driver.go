package main

import (
	"context"
	"errors"
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
)

func runDriver(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("driver", "Run the CSI node plugin: serve CSI Identity and Node on a unix socket.", stdout)
	var (
		endpoint    = fs.String("endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket)")
		nodeID      = fs.String("node-id", hostname(), "node id reported to kubelet (the Kubernetes node name)")
		driverName  = fs.String("driver-name", "csi.secretfs.dev", "CSI driver name")
		kubeconfig  = fs.String("kubeconfig", "", "kubeconfig for reading SecretProviderClasses (in-cluster config when empty)")
		classDir    = fs.String("class-dir", "", "read SecretProviderClass YAML files from this directory instead of the API")
		rotation    = fs.Duration("rotation-interval", 2*time.Minute, "refresh a volume on republish when its last fetch is older than this")
		healthAddr  = fs.String("health-addr", defaultHealthAddr, "address for /healthz (empty: off); loopback, for the exec probe `secretfs probe`")
		metricsAddr = fs.String("metrics-addr", "127.0.0.1:9809", "address for /metrics (empty: off); the manifests set the pod's own IP, so a scraper reaches it and nothing else listens")
		regDir      = fs.String("registration-dir", "", "kubelet plugin registration directory to register in (empty: rely on node-driver-registrar)")
		kubeletDir  = fs.String("kubelet-dir", "/var/lib/kubelet", "kubelet's root directory: after a restart only volumes below it are recovered")
		useCache    = fs.Bool("cache", true, "share backend results between the volumes of one identity (namespace, service account, secret-ref data, class parameters) on this node, in memory only; false: every volume fetches for itself")
		useEvents   = fs.Bool("events", true, "post a Warning SecretRefreshFailed Event on the pod when a refresh of its mounted volume fails (at most one per volume and rotation interval); needs the API server, so ignored with -class-dir and no kubeconfig or in-cluster config")
		rotEvents   = fs.Bool("rotation-events", false, "also post a Normal SecretRotated Event on the pod each time its volume's content changes (one API write per rotation and volume)")
		tmpfsSize   = quantityFlag{bytes: 8 << 20}
		logs        logFlags
		backends    backendFlags
	)
	fs.Var(&tmpfsSize, "tmpfs-size", "size cap of each volume's tmpfs (a quantity, e.g. 8Mi)")
	logs.register(fs)
	backends.register(fs)
	backends.registerExternal(fs)
	backends.registerAllowList(fs, "azure,kubernetes")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	if *nodeID == "" {
		return fail(stderr, fs, 2, "-node-id is required (the Kubernetes node name)")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// The API server is needed for classes unless they come from files; the
	// kubernetes backend uses its address when there is one.
	restConfig, err := loadRESTConfig(*kubeconfig)
	if err != nil {
		if *classDir == "" || *kubeconfig != "" {
			return fail(stderr, fs, 1, "%v", err)
		}
		restConfig = nil // classes from files, and no API server
	}
	var classes driver.ClassSource
	if *classDir != "" {
		classes = driver.NewDirClassSource(*classDir)
	} else if classes, err = driver.NewAPIClassSource(ctx, restConfig); err != nil {
		return fail(stderr, fs, 1, "watching SecretProviderClasses: %v", err)
	}
	providers, closeProviders, err := backends.resolver(restConfig, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer closeProviders()

	var events driver.EventSink
	if *useEvents && restConfig != nil {
		rec, err := driver.NewAPIEvents(restConfig, driver.EventOptions{Component: *driverName, Host: *nodeID, Rotated: *rotEvents})
		if err != nil {
			return fail(stderr, fs, 1, "%v", err)
		}
		defer rec.Close()
		events = rec
	} else if *useEvents {
		log.Info("no API server configured: refresh failures are logged and counted, not posted as Events")
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d, err := driver.New(driver.Config{
		DriverName:       *driverName,
		NodeID:           *nodeID,
		Classes:          classes,
		Providers:        providers,
		TmpfsSize:        tmpfsSize.bytes,
		RotationInterval: *rotation,
		Logger:           log,
		Registerer:       registry,
		RecoverUnder:     *kubeletDir,
		DisableCache:     !*useCache,
		Events:           events,
	})
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.Serve(ctx, *endpoint) })
	if *healthAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/healthz", d.HealthHandler())
		g.Go(func() error { return serveHTTP(ctx, *healthAddr, mux, log) })
	}
	if *metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{Registry: registry}))
		g.Go(func() error { return serveHTTP(ctx, *metricsAddr, mux, log) })
	}
	if *regDir != "" {
		g.Go(func() error { return registerWithKubelet(ctx, *regDir, *driverName, *endpoint, log) })
	}
	log.Info("secretfs driver starting", "version", versionString(), "driver", *driverName, "node", *nodeID, "endpoint", *endpoint)
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return fail(stderr, fs, 1, "%v", err)
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
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
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
