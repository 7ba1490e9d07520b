package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/secretfs/secretfs/proto/v1alpha1"
	"github.com/secretfs/secretfs/provider"
)

const (
	// DefaultTimeout bounds one provider call, well under the 2 minutes
	// kubelet gives a NodePublishVolume, so the driver can still answer.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxRecvMsgSize is 4 times gRPC's (and the upstream driver's)
	// default, so any volume that mounts upstream mounts here; the tmpfs size
	// cap of the volume is the real limit.
	DefaultMaxRecvMsgSize = 16 << 20
)

// Options configure a Client.
type Options struct {
	// SocketDirs are searched in order for <name>.sock; the first that
	// exists is used.
	SocketDirs []string
	// Timeout bounds each call; the caller's deadline applies too.
	// Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxRecvMsgSize bounds a provider's response in bytes.
	// Zero means DefaultMaxRecvMsgSize.
	MaxRecvMsgSize int
	// Audiences says which of the pod's tokens each provider receives;
	// nil means DefaultAudiences.
	Audiences *Audiences
	// Logger says once per provider which token audiences it is not sent
	// (default slog.Default()).
	Logger *slog.Logger
}

// Client reaches external providers over their unix sockets. Connections are
// made per provider name on first use and kept until Close.
type Client struct {
	opts      Options
	audiences Audiences

	mu        sync.Mutex
	closed    bool
	providers map[string]*remote
}

// New returns a Client; it connects to nothing until a provider is used.
func New(opts Options) *Client {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxRecvMsgSize <= 0 {
		opts.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	dirs := make([]string, 0, len(opts.SocketDirs))
	for _, d := range opts.SocketDirs {
		if abs, err := filepath.Abs(d); err == nil {
			dirs = append(dirs, abs)
		}
	}
	opts.SocketDirs = dirs
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	aud := DefaultAudiences()
	if opts.Audiences != nil {
		aud = *opts.Audiences
	}
	return &Client{opts: opts, audiences: aud, providers: map[string]*remote{}}
}

// ValidName reports whether name can name a provider socket: letters,
// digits, '-', '_' and '.', no slashes, no "..", at most 63 characters.
// Upstream's provider names ([a-zA-Z0-9_-]) and dots; a name starts with a
// letter or digit, so "." and ".." are not names. A loop, not a regular
// expression: {0,62} compiles into 62 copies of the class, held on the heap
// from start-up on.
func ValidName(name string) bool {
	if name == "" || len(name) > 63 || strings.Contains(name, "..") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Provider returns the provider.Provider for an external provider name
// whose socket is in one of the socket directories (Unavailable naming the
// paths tried otherwise: call again once the provider runs). The socket is
// looked up again on every call, so a provider that restarts is found
// without a new Provider.
func (c *Client) Provider(name string) (provider.Provider, error) {
	return c.remote(name)
}

func (c *Client) remote(name string) (*remote, error) {
	if !ValidName(name) {
		return nil, provider.InvalidArgument("invalid provider name %q: use letters, digits, '-', '_' and '.', without slashes or '..', at most 63 characters", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, provider.Unavailable("provider client is shut down")
	}
	r, ok := c.providers[name]
	if !ok {
		// Provider names come from classes, which tenants write: remember
		// only names with a socket in the admin's directories, so the table
		// is bounded by what the admin installed, not by what classes name.
		if _, _, err := c.find(name); err != nil {
			return nil, err
		}
		r = &remote{c: c, name: name}
		c.providers[name] = r
	}
	return r, nil
}

// VersionInfo is a provider's answer to Version.
type VersionInfo struct {
	Protocol       string
	RuntimeName    string
	RuntimeVersion string
}

// Version asks provider name for its version, for health checks and logs.
func (c *Client) Version(ctx context.Context, name string) (VersionInfo, error) {
	r, err := c.remote(name)
	if err != nil {
		return VersionInfo{}, err
	}
	var resp *pb.VersionResponse
	err = r.call(ctx, r.c.opts.MaxRecvMsgSize, func(ctx context.Context, api pb.CSIDriverProviderClient) (err error) {
		resp, err = api.Version(ctx, &pb.VersionRequest{Version: protocolVersion})
		return err
	})
	if err != nil {
		return VersionInfo{}, err
	}
	return VersionInfo{Protocol: resp.GetVersion(), RuntimeName: resp.GetRuntimeName(), RuntimeVersion: resp.GetRuntimeVersion()}, nil
}

// Close closes every connection. Calls after Close fail with Unavailable.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	providers := c.providers
	c.providers = map[string]*remote{}
	c.mu.Unlock()
	var errs []error
	for _, r := range providers {
		errs = append(errs, r.close())
	}
	return errors.Join(errs...)
}

// remote is one external provider. It holds at most one connection, to the
// socket file it was dialled for; when that file is replaced or the provider
// is unreachable, the connection is dropped and dialled again.
type remote struct {
	c    *Client
	name string

	mu     sync.Mutex
	closed bool
	cur    *conn
	// withheld is the last set of audiences logged as not forwarded.
	withheld string
}

type conn struct {
	path string
	id   fileID
	cc   *grpc.ClientConn
	api  pb.CSIDriverProviderClient
}

// fileID identifies a socket file, so a restarted provider that created a
// new socket at the same path is noticed before the first failed call.
type fileID struct{ dev, ino uint64 }

// Fetch implements provider.Provider.
func (r *remote) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	fwd := *req
	var withheld []string
	fwd.Tokens, withheld = r.c.audiences.Filter(r.name, req.Tokens)
	r.noteWithheld(withheld)
	m, err := encodeMountRequest(&fwd)
	if err != nil {
		return nil, err
	}
	// The response is bounded by the volume's wire allowance before gRPC
	// allocates it (and by -provider-max-message-size), its files by the
	// volume's limits as they are taken over.
	budget := provider.NewBudget(req)
	maxMsg := int(min(int64(r.c.opts.MaxRecvMsgSize), budget.Limits().WireBytes()))
	var resp *pb.MountResponse
	err = r.call(ctx, maxMsg, func(ctx context.Context, api pb.CSIDriverProviderClient) (err error) {
		resp, err = api.Mount(ctx, m, grpc.MaxCallRecvMsgSize(maxMsg))
		return err
	})
	if err != nil {
		return nil, err
	}
	return r.result(resp, req.DefaultMode, budget)
}

// noteWithheld logs which token audiences the provider is not sent, once
// for each set: a provider that fails for want of a token is then explained
// in the driver's log. Audiences are names, never tokens.
func (r *remote) noteWithheld(withheld []string) {
	if len(withheld) == 0 {
		return
	}
	for i, a := range withheld {
		if a == "" {
			withheld[i] = apiServerAudience
		}
	}
	key := strings.Join(withheld, ",")
	r.mu.Lock()
	changed := r.withheld != key
	r.withheld = key
	r.mu.Unlock()
	if changed {
		r.c.opts.Logger.Info("not forwarding these service-account token audiences to an external provider; if it needs one, add it with --provider-audiences",
			"provider", r.name, "withheld", withheld, "forwarded", r.c.audiences.For(r.name))
	}
}

// call runs fn with the call deadline. On Unavailable (the provider went
// away, or says it is unavailable) it drops the connection, finds the socket
// again and retries once, as upstream's retry policy would.
func (r *remote) call(ctx context.Context, maxMsg int, fn func(context.Context, pb.CSIDriverProviderClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, r.c.opts.Timeout)
	defer cancel()
	start := time.Now()
	for attempt := 0; ; attempt++ {
		cn, err := r.conn()
		if err != nil {
			return err
		}
		err = fn(ctx, cn.api)
		if err == nil {
			return nil
		}
		code := status.Code(err)
		// Canceled with a live ctx means another call closed this connection
		// because the socket was replaced.
		if attempt == 0 && ctx.Err() == nil && (code == codes.Unavailable || code == codes.Canceled) {
			r.drop(cn)
			continue
		}
		return r.callError(ctx, cn.path, start, maxMsg, err)
	}
}

// callError keeps the provider's code and says which provider failed.
func (r *remote) callError(ctx context.Context, path string, start time.Time, maxMsg int, err error) error {
	st := status.Convert(err)
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return provider.DeadlineExceeded("provider %q (%s) did not answer within %s", r.name, path, time.Since(start).Round(time.Millisecond))
	case st.Code() == codes.Canceled && ctx.Err() != nil:
		return provider.Errorf(codes.Canceled, "call to provider %q was canceled", r.name)
	case st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "received message larger than max"):
		size := "larger than the driver accepts"
		var got, limit int
		if _, err := fmt.Sscanf(st.Message(), "grpc: received message larger than max (%d vs. %d)", &got, &limit); err == nil {
			size = fmt.Sprintf("of %d bytes", got)
		}
		return provider.Errorf(codes.ResourceExhausted, "provider %q returned a response %s; the driver accepts at most %d bytes (the lower of --provider-max-message-size and twice the per-volume --tmpfs-size plus 1 MiB): mount fewer or smaller objects",
			r.name, size, maxMsg)
	case st.Code() == codes.Unavailable:
		return provider.Unavailable("provider %q at %s is unavailable: %s", r.name, path, provider.Clip(st.Message(), 1024))
	}
	return provider.Errorf(st.Code(), "provider %q: %s", r.name, provider.Clip(st.Message(), 1024))
}

// result checks a MountResponse and turns it into a provider.Result.
func (r *remote) result(resp *pb.MountResponse, defaultMode os.FileMode, budget *provider.Budget) (*provider.Result, error) {
	if code := resp.GetError().GetCode(); code != "" {
		return nil, provider.Errorf(codeFromString(code), "provider %q failed with error code %q", r.name, provider.Clip(code, 1024))
	}
	var versions []provider.ObjectVersion
	for _, v := range resp.GetObjectVersion() {
		versions = append(versions, provider.ObjectVersion{ID: v.GetId(), Version: v.GetVersion()})
	}
	if len(resp.GetFiles()) == 0 {
		// The provider wrote the files into the target itself (or there are none).
		return &provider.Result{Versions: versions, WrittenByProvider: true}, nil
	}
	if defaultMode == 0 {
		defaultMode = provider.DefaultFileMode
	}
	res := &provider.Result{Files: make([]provider.File, 0, len(resp.GetFiles()))}
	for _, f := range resp.GetFiles() {
		mode := f.GetMode()
		if mode < 0 || mode > 0o777 {
			return nil, provider.Errorf(codes.Internal, "provider %q returned file %q with mode %d, outside 0..511 (0777)", r.name, provider.Clip(f.GetPath(), 1024), mode)
		}
		fm := os.FileMode(mode)
		if fm == 0 {
			fm = defaultMode
		}
		if err := budget.File(int64(len(f.GetContents()))); err != nil {
			return nil, provider.Errorf(codes.ResourceExhausted, "provider %q: %s", r.name, err.Error())
		}
		res.Files = append(res.Files, provider.File{Path: f.GetPath(), Mode: fm, Contents: f.GetContents()})
	}
	res.Versions = versions
	return res, nil
}

// conn returns the connection to the provider's current socket, dialling
// when there is none or the socket file changed.
func (r *remote) conn() (*conn, error) {
	path, id, err := r.c.find(r.name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, provider.Unavailable("provider client is shut down")
	}
	if err != nil {
		if r.cur != nil {
			r.cur.cc.Close()
			r.cur = nil
		}
		return nil, err
	}
	if r.cur != nil && r.cur.path == path && r.cur.id == id {
		return r.cur, nil
	}
	cc, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()), // the socket's file mode is the access control
		grpc.WithAuthority("localhost"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(r.c.opts.MaxRecvMsgSize)),
	)
	if err != nil {
		return nil, provider.Unavailable("provider %q: cannot use socket %s: %v", r.name, path, err)
	}
	if r.cur != nil {
		r.cur.cc.Close()
	}
	r.cur = &conn{path: path, id: id, cc: cc, api: pb.NewCSIDriverProviderClient(cc)}
	return r.cur, nil
}

// drop forgets cn if it is still the current connection.
func (r *remote) drop(cn *conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == cn {
		r.cur = nil
		cn.cc.Close()
	}
}

func (r *remote) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.cur == nil {
		return nil
	}
	err := r.cur.cc.Close()
	r.cur = nil
	return err
}

// find returns the first <dir>/<name>.sock that is a socket.
func (c *Client) find(name string) (string, fileID, error) {
	tried := make([]string, 0, len(c.opts.SocketDirs))
	for _, dir := range c.opts.SocketDirs {
		path := filepath.Join(dir, name+".sock")
		tried = append(tried, path)
		fi, err := os.Stat(path)
		if err != nil || fi.Mode()&os.ModeSocket == 0 {
			continue
		}
		var id fileID
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			id = fileID{dev: uint64(st.Dev), ino: st.Ino}
		}
		return path, id, nil
	}
	if len(tried) == 0 {
		return "", fileID{}, provider.Unavailable("provider %q: no provider socket directories are configured", name)
	}
	return "", fileID{}, provider.Unavailable("provider %q is not running on this node: no socket at %s", name, strings.Join(tried, " or "))
}

// codeFromString reads a MountResponse error code. Providers choose these
// freely (upstream uses them as metric labels); a gRPC code name in either
// spelling ("NotFound", "NOT_FOUND") keeps its meaning, anything else is
// Unknown.
func codeFromString(s string) codes.Code {
	norm := strings.ToLower(strings.ReplaceAll(s, "_", ""))
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		if strings.ToLower(c.String()) == norm {
			return c
		}
	}
	return codes.Unknown
}

var _ provider.External = (*remote)(nil)

// ExternalProvider marks remote as a provider.External.
func (r *remote) ExternalProvider() {}

// String names the provider in logs.
func (r *remote) String() string { return fmt.Sprintf("plugin provider %q", r.name) }
