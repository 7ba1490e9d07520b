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
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/plugin"
	"github.com/secretfs/secretfs/test/fakeprovider"
)

// extEnv is a driver whose classes may name external providers, served by
// test/fakeprovider over real unix sockets.
type extEnv struct {
	*env
	sockDir string
	values  sync.Map // object name -> value
}

func newExtEnv(t *testing.T, tweak func(*Config)) *extEnv {
	t.Helper()
	x := &extEnv{}
	var err error
	if x.sockDir, err = os.MkdirTemp("", "sfs-prov"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(x.sockDir) })
	client := plugin.New(plugin.Options{SocketDirs: []string{x.sockDir}, Logger: quietLog})
	t.Cleanup(func() { client.Close() })
	x.env = newEnv(t, func(c *Config) {
		builtin := c.Providers
		c.Providers = func(name string) (provider.Provider, error) {
			if p, err := builtin(name); err == nil {
				return p, nil
			}
			return client.Provider(name)
		}
		if tweak != nil {
			tweak(c)
		}
	})
	return x
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// serve starts a fake provider named name.
func (x *extEnv) serve(name string, driverWrites bool) *fakeprovider.Server {
	t := x.t
	s := &fakeprovider.Server{DriverWrites: driverWrites, Values: func(n string) ([]byte, bool) {
		v, ok := x.values.Load(n)
		if !ok {
			return nil, false
		}
		return []byte(v.(string)), true
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	path := filepath.Join(x.sockDir, name+".sock")
	go func() { done <- fakeprovider.Serve(ctx, path, s) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "provider socket", func() bool { _, err := os.Stat(path); return err == nil })
	return s
}

func (x *extEnv) class(name, providerName string, params map[string]string) {
	x.classes["team-a/"+name] = &class.Class{Name: name, Namespace: "team-a", Provider: providerName, Parameters: params}
}

func (x *extEnv) publishPod(id, target, class, podUID string) error {
	req := publishReq(id, target, class, "team-a")
	req.VolumeContext[provider.AttrPodUID] = podUID
	req.VolumeContext[provider.AttrPodName] = "pod-" + podUID
	_, err := x.node.NodePublishVolume(context.Background(), req)
	return err
}

const awsObjects = `- objectName: prod/db/password
  objectType: secretsmanager
- objectName: api-key
  objectType: secretsmanager
  objectAlias: key.txt
  filePermission: "0400"
`

// An external provider that writes the files itself (the AWS provider's
// default, driverWritesSecrets=false) is called only once the volume's tmpfs
// is mounted at the target: it writes into the tmpfs, the driver records
// the versions, a rotation calls it again with them, and unpublish leaves
// nothing on disk. Before, the driver called it before mounting (it wrote
// onto the node's disk) and then refused the empty answer.
func TestProviderWritesIntoVerifiedTmpfs(t *testing.T) {
	x := newExtEnv(t, nil)
	aws := x.serve("aws", false)
	x.values.Store("prod/db/password", "hunter2")
	x.values.Store("api-key", "k-1")
	x.class("aws-app", "aws", map[string]string{"objects": awsObjects, "region": "us-east-1"})
	target := x.target("vol")

	if err := x.publishPod("vol-1", target, "aws-app", "uid-1"); err != nil {
		t.Fatalf("publish: %v", err)
	}
	mounts := aws.Mounts()
	if len(mounts) != 1 || mounts[0].TargetPath != target || !mounts[0].TargetWasTmpfs {
		t.Fatalf("provider calls %+v: want one, on the tmpfs at %s", mounts, target)
	}
	if got := readFile(t, filepath.Join(target, "prod_db_password")); got != "hunter2" {
		t.Errorf("password %q", got)
	}
	fi, err := os.Stat(filepath.Join(target, "key.txt"))
	if err != nil || fi.Mode().Perm() != 0o400 || readFile(t, filepath.Join(target, "key.txt")) != "k-1" {
		t.Errorf("key.txt: %v %v", fi, err)
	}
	v, err := loadVolume(target)
	if err != nil || len(v.versions) != 2 {
		t.Fatalf("versions not recorded: %+v %v", v, err)
	}

	// Rotation: the provider is called again with the versions mounted now,
	// on the same tmpfs, and rewrites the files.
	x.values.Store("api-key", "k-2")
	v = x.d.volume("vol-1")
	v.lastFetch, v.lastTry = time.Time{}, time.Time{} // due now
	if err := x.publishPod("vol-1", target, "aws-app", "uid-1"); err != nil {
		t.Fatal(err)
	}
	mounts = aws.Mounts()
	if len(mounts) != 2 || !mounts[1].TargetWasTmpfs || len(mounts[1].Versions) != 2 {
		t.Fatalf("calls after rotation %+v", mounts)
	}
	if got := readFile(t, filepath.Join(target, "key.txt")); got != "k-2" {
		t.Errorf("after rotation key.txt = %q", got)
	}
	if got := testutil.ToFloat64(x.d.metrics.Refresh.WithLabelValues("republish", "rotated")); got != 1 {
		t.Errorf("rotated count %v", got)
	}

	if err := x.unpublish("vol-1", target); err != nil {
		t.Fatalf("unpublish: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}
	if m := mountsUnder(t, x.dir); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

// A provider that writes more than the volume may hold hits the tmpfs
// size (its write fails) or the cap check: the publish fails
// ResourceExhausted and nothing it wrote is left, on the tmpfs or the disk.
func TestProviderWritesTooMuch(t *testing.T) {
	const capBytes = 64 << 10
	x := newExtEnv(t, func(c *Config) { c.TmpfsSize = capBytes })
	x.serve("aws", false)
	objects := ""
	for i, size := range []int{3 * capBytes / 2, 3 * capBytes / 2, 3 * capBytes / 2} {
		name := fmt.Sprintf("big-%d", i)
		x.values.Store(name, strings.Repeat("x", size))
		objects += "- objectName: " + name + "\n"
		x.class(fmt.Sprintf("too-much-%d", i+1), "aws", map[string]string{"objects": objects})
	}
	x.class("just-over", "aws", map[string]string{"objects": "- objectName: big-0\n"})
	for _, class := range []string{"just-over", "too-much-3"} {
		target := x.target(class)
		err := x.publishPod("vol-"+class, target, class, "uid-1")
		if class == "just-over" && status.Code(err) != codes.ResourceExhausted {
			t.Errorf("%s: %v, want ResourceExhausted", class, err)
		}
		if err == nil {
			t.Errorf("%s: published", class)
		}
		if _, err := os.Lstat(target); !os.IsNotExist(err) {
			t.Errorf("%s: target left behind: %v", class, err)
		}
	}
	if m := mountsUnder(t, x.dir); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

const dynamicObjects = `- objectName: db-creds
  objectType: dynamic
`

// An external provider's answers are per pod by default: two pods of the
// same service account and class each get their own (dynamic) credentials.
// The admin (CacheExternal) or the class (secretfs.dev/nodeCache, which the
// provider never sees) can opt in to sharing; a built-in backend is shared.
func TestExternalAnswersArePerPod(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tweak  func(*Config)
		params map[string]string
		shared bool
	}{
		{name: "default", shared: false},
		{name: "class opts in", params: map[string]string{"secretfs.dev/nodeCache": "true"}, shared: true},
		{name: "admin opts in", tweak: func(c *Config) { c.CacheExternal = []string{"vault"} }, shared: true},
		{name: "admin opts in, class out", tweak: func(c *Config) { c.CacheExternal = []string{"*"} }, params: map[string]string{"secretfs.dev/nodeCache": "false"}, shared: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newExtEnv(t, tc.tweak)
			vault := x.serve("vault", true)
			params := map[string]string{"objects": dynamicObjects, "roleName": "db"}
			for k, v := range tc.params {
				params[k] = v
			}
			x.class("db", "vault", params)
			a, b := x.target("a"), x.target("b")
			if err := x.publishPod("vol-a", a, "db", "uid-a"); err != nil {
				t.Fatal(err)
			}
			if err := x.publishPod("vol-b", b, "db", "uid-b"); err != nil {
				t.Fatal(err)
			}
			credA, credB := readFile(t, filepath.Join(a, "db-creds")), readFile(t, filepath.Join(b, "db-creds"))
			calls := len(vault.Mounts())
			if tc.shared {
				if credA != credB || calls != 1 {
					t.Errorf("shared: pods got %q and %q in %d provider calls, want one answer", credA, credB, calls)
				}
			} else if credA == credB || calls != 2 {
				t.Errorf("per pod: pods got %q and %q in %d provider calls, want two answers", credA, credB, calls)
			}
			for _, m := range vault.Mounts() {
				for k := range m.Attributes {
					if strings.HasPrefix(k, "secretfs.dev/") {
						t.Errorf("the provider received the driver's parameter %s", k)
					}
				}
			}
			x.unpublish("vol-a", a)
			x.unpublish("vol-b", b)
		})
	}
	// Built-in backends keep the cache.
	e := newEnv(t, nil)
	req := func(id, uid string) *csi.NodePublishVolumeRequest {
		r := publishReq(id, e.target(id), "app", "team-a")
		r.VolumeContext[provider.AttrPodUID] = uid
		return r
	}
	for _, id := range []string{"x", "y"} {
		if _, err := e.node.NodePublishVolume(context.Background(), req(id, "uid-"+id)); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.prov.callCount(); n != 1 {
		t.Errorf("built-in backend called %d times for two pods of one identity, want 1 (cached)", n)
	}
}

// A bad secretfs.dev/nodeCache value is refused, naming the parameter.
func TestNodeCacheParameterInvalid(t *testing.T) {
	x := newExtEnv(t, nil)
	x.serve("vault", true)
	x.class("bad", "vault", map[string]string{"objects": dynamicObjects, "secretfs.dev/nodeCache": "sometimes"})
	err := x.publishPod("vol", x.target("vol"), "bad", "uid")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "secretfs.dev/nodeCache") {
		t.Fatalf("got %v", err)
	}
}

// With the node cache shared for an external provider that writes the
// files itself, a second pod is not handed the first pod's (fileless)
// answer: the provider writes into each pod's tmpfs.
func TestProviderWritesWithSharedCache(t *testing.T) {
	x := newExtEnv(t, func(c *Config) { c.CacheExternal = []string{"*"} })
	aws := x.serve("aws", false)
	x.values.Store("prod/db/password", "hunter2")
	x.values.Store("api-key", "k-1")
	x.class("aws-app", "aws", map[string]string{"objects": awsObjects})
	for _, id := range []string{"a", "b"} {
		if err := x.publishPod("vol-"+id, x.target(id), "aws-app", "uid-"+id); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, filepath.Join(x.target(id), "key.txt")); got != "k-1" {
			t.Errorf("pod %s: key.txt %q", id, got)
		}
	}
	if n := len(aws.Mounts()); n != 2 {
		t.Errorf("provider called %d times, want once per target", n)
	}
}
