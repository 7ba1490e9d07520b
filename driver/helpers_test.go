package driver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/test/ci"
)

// testProvider is a backend for driver tests. Parameter "objects" lists the
// file names (comma-separated); each file holds "<name>=<value>#<gen>",
// value from parameter "value". Tests bump gen to rotate content.
type testProvider struct {
	mu      sync.Mutex
	calls   int
	gen     int
	err     error
	files   func(req *provider.Request) []provider.File
	block   chan struct{} // when set, Fetch waits for it to close
	lastReq *provider.Request
}

func (p *testProvider) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	p.mu.Lock()
	block := p.block
	p.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	p.lastReq = req
	if p.err != nil {
		return nil, p.err
	}
	if p.files != nil {
		return &provider.Result{Files: p.files(req)}, nil
	}
	var res provider.Result
	for _, name := range strings.Split(req.Parameters["objects"], ",") {
		if name == "" {
			continue
		}
		res.Files = append(res.Files, provider.File{Path: name, Contents: []byte(fmt.Sprintf("%s=%s#%d", name, req.Parameters["value"], p.gen))})
		res.Versions = append(res.Versions, provider.ObjectVersion{ID: name, Version: fmt.Sprint(p.gen)})
	}
	return &res, nil
}

func (p *testProvider) set(f func(p *testProvider)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *testProvider) callCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// mapClasses is a class.Source over a map keyed "namespace/name".
type mapClasses map[string]*class.Class

func (m mapClasses) Get(_ context.Context, ns, name string) (*class.Class, error) {
	if c, ok := m[ns+"/"+name]; ok {
		return c, nil
	}
	return nil, provider.NotFound("SecretProviderClass %q not found in namespace %q", name, ns)
}

type env struct {
	t        testing.TB
	d        *Driver
	node     csi.NodeClient
	identity csi.IdentityClient
	prov     *testProvider
	classes  mapClasses
	reg      *prometheus.Registry
	dir      string // parent of all targets
	sock     string
	cancel   context.CancelFunc
	served   chan error
	logs     *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testDebounce is the watch debounce of test drivers (tests run serially).
var testDebounce = 10 * time.Millisecond

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		ci.Missing(t, "driver tests need root (tmpfs mounts)")
	}
}

// newEnv starts a Driver serving on a unix socket with a test provider
// "test" and classes "app" (3 files) in namespace "team-a".
func newEnv(t testing.TB, tweak func(*Config)) *env {
	t.Helper()
	needRoot(t)
	e := &env{t: t, prov: &testProvider{}, reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	e.dir = t.TempDir()
	t.Cleanup(func() { unmountUnder(e.dir) })
	e.classes = mapClasses{
		"team-a/app":   {Name: "app", Namespace: "team-a", Provider: "test", Parameters: map[string]string{"objects": "a,b,c", "value": "v"}},
		"team-a/ghost": {Name: "ghost", Namespace: "team-a", Provider: "nosuch", Parameters: map[string]string{}},
		"team-b/other": {Name: "other", Namespace: "team-b", Provider: "test", Parameters: map[string]string{"objects": "x"}},
	}
	cfg := Config{
		NodeID:  "node-1",
		Classes: e.classes,
		Providers: func(name string) (provider.Provider, error) {
			if name == "test" {
				return e.prov, nil
			}
			return nil, fmt.Errorf("unknown provider %q", name)
		},
		RotationInterval: time.Hour,
		Logger:           slog.New(slog.NewJSONHandler(io.MultiWriter(e.logs), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:       e.reg,
		RecoverUnder:     e.dir,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	e.start(cfg)
	return e
}

func (e *env) start(cfg Config) {
	t := e.t
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.rotation.Debounce = testDebounce
	e.d = d
	sockDir, err := os.MkdirTemp("", "sfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	e.sock = filepath.Join(sockDir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.served = make(chan error, 1)
	go func() { e.served <- d.Serve(ctx, "unix://"+e.sock) }()
	conn, err := grpc.NewClient("unix://"+e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.node = csi.NewNodeClient(conn)
	e.identity = csi.NewIdentityClient(conn)
	waitFor(t, "driver ready", func() bool { return d.ready() })
	t.Cleanup(func() { e.stop(); conn.Close() })
}

// stop shuts the server down and stops watches; mounts stay.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	if err := <-e.served; err != nil {
		e.t.Errorf("Serve: %v", err)
	}
	e.d.Close()
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (e *env) target(name string) string { return filepath.Join(e.dir, name) }

// publishReq is what kubelet sends for an inline volume of class in ns.
func publishReq(id, target, class, ns string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:   id,
		TargetPath: target,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly: true,
		VolumeContext: map[string]string{
			provider.AttrClass:          class,
			provider.AttrEphemeral:      "true",
			provider.AttrPodName:        "web-0",
			provider.AttrPodNamespace:   ns,
			provider.AttrPodUID:         "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
			provider.AttrServiceAccount: "web",
		},
	}
}

func (e *env) publish(id, target string) error {
	_, err := e.node.NodePublishVolume(context.Background(), publishReq(id, target, "app", "team-a"))
	return err
}

func (e *env) unpublish(id, target string) error {
	_, err := e.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

// mountsUnder lists secretfs mounts below dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	all, err := tmpfs.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range all {
		if within(dir, m) {
			out = append(out, m)
		}
	}
	return out
}

// unmountUnder detaches every mount below dir, so a failing test never
// leaves a mount behind on the machine.
func unmountUnder(dir string) {
	all, _ := tmpfs.List()
	for _, m := range all {
		if within(dir, m) {
			unix.Unmount(m, unix.MNT_DETACH)
		}
	}
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fakeClock is a rotation clock (Config.Now) that moves only when a test
// advances it: a rotation comes due without sleeping.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
