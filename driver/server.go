package driver

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/secretfs/secretfs/internal/unixsock"
)

// gracePeriod bounds how long Serve waits for in-flight calls on shutdown.
const gracePeriod = 10 * time.Second

// Serve serves the Identity and Node services on a unix socket until ctx is
// done, then stops gracefully. endpoint is unix:///path/csi.sock,
// unix:/path/csi.sock or a plain absolute path (see unixsock.Parse). A
// stale socket file is replaced; a socket another process still serves on
// is not. Only root (kubelet) may connect: the socket is 0600.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	path, err := unixsock.Parse(endpoint)
	if err != nil {
		return err
	}
	lis, err := unixsock.Listen(path, 0o600)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(serverOptions()...)
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)

	d.serving.Store(true)
	defer d.serving.Store(false)
	stopServing := context.AfterFunc(ctx, func() {
		d.serving.Store(false)
		d.locks.CancelAll() // in-flight publishes and refreshes: kubelet retries them
	})
	defer stopServing()
	d.log.Info("serving CSI", "endpoint", path, "driver", d.name, "version", Version, "node_id", d.nodeID)
	if err := unixsock.Serve(ctx, srv, lis, gracePeriod); err != nil {
		return fmt.Errorf("serving CSI: %w", err)
	}
	return nil
}

// serverOptions: kubelet dials a new connection per CSI call; fixed
// flow-control windows (gRPC's defaults) spare each connection the
// bandwidth estimator (BenchmarkKubeletProbe). Calls run on a few
// long-lived workers instead of a new goroutine each: a handler's stack
// grows to some 16 KiB on a publish, and a fresh goroutine pays for that
// growth (copying its stack, runtime.newstack) on every call
// (BenchmarkNodePublish's profile). A call that finds every worker busy
// still gets a goroutine of its own, so no call waits for another.
func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(64 << 10),
		grpc.InitialConnWindowSize(64 << 10),
		grpc.NumStreamWorkers(streamWorkers),
	}
}

// streamWorkers is the number of gRPC workers: kubelet's calls arrive a few
// at a time, and each worker keeps its grown stack (tens of KiB).
const streamWorkers = 4

// HealthReporter adds detail lines to /healthz, such as the state of each
// external provider. It never changes the status code.
type HealthReporter interface {
	WriteHealth(w io.Writer)
}

// HealthHandler answers 200 when the driver is ready (recovery done and
// serving) and 503 otherwise; mount it at /healthz. The first line is "ok"
// or "not ready"; each reporter adds its lines after it. An unhealthy
// external provider shows there but leaves the driver ready: the volumes of
// every other provider keep working.
func (d *Driver) HealthHandler(reporters ...HealthReporter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !d.ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready")
		} else {
			fmt.Fprintln(w, "ok")
		}
		for _, rep := range reporters {
			rep.WriteHealth(w)
		}
	})
}
