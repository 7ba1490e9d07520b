package plugin

import (
	"context"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/internal/unixsock"
	pb "github.com/secretfs/secretfs/proto/v1alpha1"
	"github.com/secretfs/secretfs/provider"
)

// ServeOption configures Serve.
type ServeOption func(*serveConfig)

type serveConfig struct {
	socketMode     os.FileMode
	runtimeName    string
	runtimeVersion string
	log            *slog.Logger
	stopGrace      time.Duration
}

// WithSocketMode sets the socket's file mode (default 0600: only the driver,
// running as root, may connect). Use 0660 with a shared group.
func WithSocketMode(mode os.FileMode) ServeOption {
	return func(c *serveConfig) { c.socketMode = mode.Perm() }
}

// WithRuntime sets the name and semver version Version reports.
func WithRuntime(name, version string) ServeOption {
	return func(c *serveConfig) { c.runtimeName, c.runtimeVersion = name, version }
}

// WithLogger sets where failed mounts are logged (default slog.Default()).
func WithLogger(l *slog.Logger) ServeOption {
	return func(c *serveConfig) { c.log = l }
}

// Serve offers p over the provider protocol on a unix socket until ctx is
// done, then stops gracefully and removes the socket. endpoint is
// unix:///path/name.sock, unix:/path/name.sock or a plain absolute path (see
// unixsock.Parse). A stale socket left by a dead server is replaced; a
// socket with a live server behind it is not.
func Serve(ctx context.Context, endpoint string, p provider.Provider, opts ...ServeOption) error {
	cfg := serveConfig{socketMode: 0o600, runtimeName: "secretfs", runtimeVersion: "0.0.0-dev", stopGrace: 10 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.log == nil {
		cfg.log = slog.Default()
	}
	path, err := unixsock.Parse(endpoint)
	if err != nil {
		return err
	}
	l, err := unixsock.Listen(path, cfg.socketMode)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	pb.RegisterCSIDriverProviderServer(srv, &service{p: p, cfg: &cfg})
	cfg.log.Info("serving provider protocol", "socket", path, "runtime", cfg.runtimeName, "version", cfg.runtimeVersion)
	return unixsock.Serve(ctx, srv, l, cfg.stopGrace)
}

// service implements CSIDriverProvider on top of a provider.Provider.
type service struct {
	pb.UnimplementedCSIDriverProviderServer
	p   provider.Provider
	cfg *serveConfig
}

func (s *service) Version(context.Context, *pb.VersionRequest) (*pb.VersionResponse, error) {
	return &pb.VersionResponse{Version: protocolVersion, RuntimeName: s.cfg.runtimeName, RuntimeVersion: s.cfg.runtimeVersion}, nil
}

// Mount fetches the volume's files. Failures are gRPC status errors with the
// backend's code: upstream drivers show their message in the pod's events,
// which a MountResponse error code alone would not carry.
func (s *service) Mount(ctx context.Context, m *pb.MountRequest) (*pb.MountResponse, error) {
	start := time.Now()
	req, err := decodeMountRequest(m)
	if err != nil {
		s.cfg.log.Warn("mount request rejected", "error", err.Error())
		return nil, status.Error(provider.CodeOf(err), err.Error())
	}
	res, err := s.p.Fetch(ctx, req)
	if err == nil && res == nil {
		err = provider.Errorf(codes.Internal, "backend returned no result and no error")
	}
	if err != nil {
		code := provider.CodeOf(err)
		s.cfg.log.Warn("mount failed", "namespace", req.Pod.Namespace, "pod", req.Pod.Name, "class", req.Class,
			"code", code.String(), "error", err.Error(), "duration", time.Since(start))
		return nil, status.Error(code, err.Error())
	}
	return encodeMountResponse(res, req.DefaultMode), nil
}

// encodeMountResponse writes files with their modes, 0 meaning the default.
// Upstream drivers refuse a response without object versions, so a backend
// that reports none gets one per file (its path, with no version).
func encodeMountResponse(res *provider.Result, defaultMode os.FileMode) *pb.MountResponse {
	resp := &pb.MountResponse{Files: make([]*pb.File, 0, len(res.Files))}
	for _, f := range res.Files {
		mode := f.Mode.Perm()
		if mode == 0 {
			mode = defaultMode
		}
		resp.Files = append(resp.Files, &pb.File{Path: f.Path, Mode: int32(mode), Contents: f.Contents})
	}
	for _, v := range res.Versions {
		resp.ObjectVersion = append(resp.ObjectVersion, &pb.ObjectVersion{Id: v.ID, Version: v.Version})
	}
	if len(resp.ObjectVersion) == 0 {
		for _, f := range res.Files {
			resp.ObjectVersion = append(resp.ObjectVersion, &pb.ObjectVersion{Id: f.Path})
		}
	}
	return resp
}
