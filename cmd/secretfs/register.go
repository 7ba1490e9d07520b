package main

import (
	"context"
	"log/slog"

	"github.com/secretfs/secretfs/internal/kube/registration"
)

// registerWithKubelet serves kubelet's plugin-registration socket for the
// driver, so no node-driver-registrar sidecar is needed. The CSI endpoint must
// be the path kubelet sees on the host (the DaemonSet mounts the plugin
// directory at the same path).
func registerWithKubelet(ctx context.Context, dir, driverName, endpoint string, log *slog.Logger) error {
	return registration.Serve(ctx, dir, driverName, endpoint, log)
}
