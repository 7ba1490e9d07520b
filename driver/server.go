package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// gracePeriod bounds how long Serve waits for in-flight calls on shutdown.
const gracePeriod = 10 * time.Second

// Serve serves the Identity and Node services on a unix socket until ctx is
// done, then stops gracefully. endpoint is "unix:///path/csi.sock" or a
// plain path. A stale socket file is removed; a socket another process
// still serves on is not.
func (d *Driver) Serve(ctx context.Context, endpoint string) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	if err := removeStaleSocket(path); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("creating socket directory: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	defer os.Remove(path)
	// Only root (kubelet) talks to the driver.
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return fmt.Errorf("securing socket %s: %w", path, err)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterNodeServer(srv, d)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	d.serving.Store(true)
	d.log.Info("serving CSI", "endpoint", path, "driver", d.name, "version", Version, "node_id", d.nodeID)
	defer d.serving.Store(false)

	select {
	case err := <-errc:
		return fmt.Errorf("serving CSI: %w", err)
	case <-ctx.Done():
	}
	d.serving.Store(false)
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(gracePeriod):
		srv.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// socketPath accepts "unix:///abs/path", "unix:/abs/path" and "/abs/path".
func socketPath(endpoint string) (string, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if rest, ok := strings.CutPrefix(endpoint, "unix:"); ok {
		p = rest
	} else if strings.Contains(endpoint, "://") {
		return "", fmt.Errorf("endpoint %q: only unix sockets are supported", endpoint)
	}
	if p == "" {
		return "", fmt.Errorf("endpoint %q has no socket path", endpoint)
	}
	return filepath.Clean(p), nil
}

// removeStaleSocket removes a socket file nobody listens on any more.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another process is serving on %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

// HealthHandler answers 200 when the driver is ready (recovery done and
// serving) and 503 otherwise; mount it at /healthz.
func (d *Driver) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !d.ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready")
			return
		}
		fmt.Fprintln(w, "ok")
	})
}
