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
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/secretfs/secretfs/internal/unixsock"
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
// at csiEndpoint, in any form unixsock.Parse accepts (unix:///path,
// unix:/path, /path). The path must be the one kubelet sees on the host.
func NewServer(driverName, csiEndpoint string, log *slog.Logger) (*Server, error) {
	if driverName == "" {
		return nil, errors.New("registration: driver name is empty")
	}
	path, err := unixsock.Parse(csiEndpoint)
	if err != nil {
		return nil, fmt.Errorf("registration: CSI %w", err)
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

// stopGrace bounds how long Serve waits for a registration call in flight
// when its context ends; kubelet's calls are single small answers.
const stopGrace = time.Second

// Serve listens on SocketPath(registrationDir, driverName) until ctx ends,
// then removes the socket so kubelet deregisters the driver. It returns nil
// when ctx ends. registrationDir must exist: it is kubelet's (a missing one
// means a wrong -registration-dir, which creating it would only hide). A
// stale socket left by a previous run is replaced; a live one is not.
func (s *Server) Serve(ctx context.Context, registrationDir string) error {
	if fi, err := os.Stat(registrationDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("registration: kubelet's plugin registration directory %s does not exist (is -registration-dir <kubelet-root>/plugins_registry?)", registrationDir)
	}
	sock := SocketPath(registrationDir, s.driverName)
	// Only kubelet (root) needs to connect.
	ln, err := unixsock.Listen(sock, 0o600)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, s)
	s.log.Info("waiting for kubelet to register the driver", "socket", sock)
	// Closing the listener removes the socket, and kubelet deregisters the
	// plugin when the socket goes.
	if err := unixsock.Serve(ctx, srv, ln, stopGrace); err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	return nil
}

// Serve registers the driver with kubelet: it serves the registration socket
// for driverName in registrationDir, announcing the CSI socket at
// csiEndpoint (as seen by kubelet), until ctx ends.
func Serve(ctx context.Context, registrationDir, driverName, csiEndpoint string, log *slog.Logger) error {
	s, err := NewServer(driverName, csiEndpoint, log)
	if err != nil {
		return err
	}
	return s.Serve(ctx, registrationDir)
}
