package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
// "unix:///path/name.sock" or a plain path. A stale socket left by a dead
// server is replaced; a socket with a live server behind it is not.
func Serve(ctx context.Context, endpoint string, p provider.Provider, opts ...ServeOption) error {
	cfg := serveConfig{socketMode: 0o600, runtimeName: "secretfs", runtimeVersion: "0.0.0-dev", stopGrace: 10 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.log == nil {
		cfg.log = slog.Default()
	}
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	l, id, err := listenUnix(path, cfg.socketMode)
	if err != nil {
		return err
	}
	defer removeIfSame(path, id)

	srv := grpc.NewServer()
	pb.RegisterCSIDriverProviderServer(srv, &service{p: p, cfg: &cfg})
	cfg.log.Info("serving provider protocol", "socket", path, "runtime", cfg.runtimeName, "version", cfg.runtimeVersion)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("serving %s: %w", path, err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(cfg.stopGrace):
		srv.Stop() // in-flight calls are cut off; callers retry
	}
	<-served
	return nil
}

// socketPath accepts "unix:///abs", "unix:rel" and plain paths.
func socketPath(endpoint string) (string, error) {
	p := endpoint
	if scheme, rest, ok := strings.Cut(endpoint, "://"); ok {
		if scheme != "unix" {
			return "", fmt.Errorf("endpoint %q: only unix sockets are served (unix:///path/name.sock)", endpoint)
		}
		p = rest
	} else if rest, ok := strings.CutPrefix(endpoint, "unix:"); ok {
		p = rest
	}
	if p == "" {
		return "", fmt.Errorf("endpoint %q has no socket path", endpoint)
	}
	return filepath.Abs(p)
}

// listenUnix listens on path with the given mode. The socket is created in a
// private directory, chmod-ed and then renamed into place, so it is never
// reachable with the umask's mode, and a stale socket is replaced atomically.
func listenUnix(path string, mode os.FileMode) (*net.UnixListener, fileID, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fileID{}, fmt.Errorf("creating socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fileID{}, fmt.Errorf("refusing to replace %s: it exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fileID{}, fmt.Errorf("%s is in use by a running server", path)
		}
	}
	tmpDir, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, fileID{}, fmt.Errorf("creating socket: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) >= len(syscall.RawSockaddrUnix{}.Path) {
		// The detour does not fit a socket address: bind in place.
		tmp = path
		os.Remove(path)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fileID{}, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false) // the socket is removed by name, if still ours
	fail := func(err error) (*net.UnixListener, fileID, error) {
		l.Close()
		os.Remove(tmp)
		return nil, fileID{}, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("setting socket mode: %w", err))
	}
	if tmp != path {
		if err := os.Rename(tmp, path); err != nil {
			return fail(fmt.Errorf("placing socket at %s: %w", path, err))
		}
	}
	id, err := statID(path)
	if err != nil {
		return fail(err)
	}
	return l, id, nil
}

func statID(path string) (fileID, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return fileID{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, errors.New("no inode information for " + path)
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// removeIfSame removes path unless another server has replaced it meanwhile.
func removeIfSame(path string, id fileID) {
	if cur, err := statID(path); err == nil && cur == id {
		os.Remove(path)
	}
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
