// Package registration registers the driver with kubelet through kubelet's
// plugin-registration API, so that no node-driver-registrar sidecar is needed.
//
// kubelet watches <kubelet-root>/plugins_registry. When a socket appears there
// it calls GetInfo, connects to the CSI endpoint it was given, and reports the
// outcome with NotifyRegistrationStatus. Removing the socket deregisters the
// plugin, which is what Serve does when its context ends.
package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// SupportedVersions are the CSI spec versions announced to kubelet.
var SupportedVersions = []string{"1.0.0"}

// SocketPath is where the registration socket of driverName lives.
// The name matches node-driver-registrar's, so the two are interchangeable.
func SocketPath(registrationDir, driverName string) string {
	return filepath.Join(registrationDir, driverName+"-reg.sock")
}

// Server answers kubelet's registration calls for one CSI driver.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	driverName string
	endpoint   string
	log        *slog.Logger

	mu         sync.Mutex
	notified   bool
	registered bool
	lastError  string
}

// NewServer returns a registration server for driverName whose CSI socket is
// at csiEndpointPath. The path must be the one kubelet sees on the host; a
// "unix://" prefix is accepted and removed.
func NewServer(driverName, csiEndpointPath string, log *slog.Logger) (*Server, error) {
	if driverName == "" {
		return nil, errors.New("registration: driver name is empty")
	}
	path := strings.TrimPrefix(csiEndpointPath, "unix://")
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("registration: CSI endpoint %q is not an absolute unix socket path", csiEndpointPath)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{driverName: driverName, endpoint: path, log: log}, nil
}

// GetInfo tells kubelet what kind of plugin this is and where its CSI socket is.
func (s *Server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driverName,
		Endpoint:          s.endpoint,
		SupportedVersions: SupportedVersions,
	}, nil
}

// NotifyRegistrationStatus records kubelet's verdict. A refusal is logged as an
// error: the driver runs but kubelet will not call it.
func (s *Server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	s.notified, s.registered, s.lastError = true, st.GetPluginRegistered(), st.GetError()
	s.mu.Unlock()
	if st.GetPluginRegistered() {
		s.log.Info("registered with kubelet", "driver", s.driverName, "endpoint", s.endpoint)
	} else {
		s.log.Error("kubelet refused registration", "driver", s.driverName, "endpoint", s.endpoint, "error", st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Status reports kubelet's last verdict: notified is false until kubelet has
// called NotifyRegistrationStatus; errMsg is kubelet's reason for a refusal.
func (s *Server) Status() (notified, registered bool, errMsg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notified, s.registered, s.lastError
}

// Serve listens on SocketPath(registrationDir, driverName) until ctx ends,
// then removes the socket so kubelet deregisters the driver. It returns nil
// when ctx ends.
func (s *Server) Serve(ctx context.Context, registrationDir string) error {
	sock := SocketPath(registrationDir, s.driverName)
	// A socket left by a previous run would refuse the bind; nothing else
	// may live at this name.
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("registration: removing stale socket: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	// Only kubelet (root) needs to connect.
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("registration: securing socket: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, s)
	s.log.Info("waiting for kubelet to register the driver", "socket", sock)

	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		srv.Stop()
	}()
	err = srv.Serve(ln)
	close(done)
	// Closing a unix listener unlinks its socket, and kubelet deregisters the
	// plugin when the socket goes. grpc has closed it already unless Serve
	// failed early.
	_ = ln.Close()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("registration: %w", err)
	}
	return nil
}

// Serve registers the driver with kubelet: it serves the registration socket
// for driverName in registrationDir, announcing the CSI socket at
// csiEndpointPath (as seen by kubelet), until ctx ends.
func Serve(ctx context.Context, registrationDir, driverName, csiEndpointPath string, log *slog.Logger) error {
	s, err := NewServer(driverName, csiEndpointPath, log)
	if err != nil {
		return err
	}
	return s.Serve(ctx, registrationDir)
}
