package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

func TestPublishUnpublish(t *testing.T) {
	e := newEnv(t, nil)
	target := e.target("vol")
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if err := tmpfs.Verify(target); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if got := readFile(t, filepath.Join(target, n)); got != n+"=v#0" {
			t.Fatalf("%s = %q", n, got)
		}
		fi, _ := os.Stat(filepath.Join(target, n))
		if fi.Mode().Perm() != 0o644 {
			t.Fatalf("%s mode %v", n, fi.Mode())
		}
	}
	var st unix.Stat_t
	unix.Stat(target, &st)
	if st.Mode&0o777 != rootModeNoGroup {
		t.Fatalf("root mode %o", st.Mode&0o777)
	}
	// The request the provider saw: identity from the pod, parameters from the class.
	req := e.prov.lastReq
	if req.Pod != (provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0f1e2d3c-aaaa-bbbb-cccc-000000000001", ServiceAccount: "web"}) ||
		req.Class != "app" || req.TargetPath != target || req.Parameters["objects"] != "a,b,c" || req.DefaultMode != 0o644 {
		t.Fatalf("provider request %+v", req)
	}
	// Metadata: non-secret, 0600.
	fi, err := os.Lstat(filepath.Join(target, recordFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("metadata file: %v %v", fi, err)
	}
	var md record
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(target, recordFile))), &md); err != nil || md.VolumeID != "vol-1" || md.Class != "app" || md.Provider != "test" || len(md.Versions) != 3 {
		t.Fatalf("metadata %+v %v", md, err)
	}
	if got := testutil.ToFloat64(e.d.metrics.Mounted); got != 1 {
		t.Fatalf("volumes_mounted = %v", got)
	}

	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target still exists: %v", err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("still mounted: %v", m)
	}
	if e.d.volume("vol-1") != nil {
		t.Fatal("state not wiped")
	}
	// Idempotent: again, and for targets that never existed.
	for _, tc := range [][2]string{{"vol-1", target}, {"never", e.target("never")}} {
		if err := e.unpublish(tc[0], tc[1]); err != nil {
			t.Fatalf("unpublish %v: %v", tc, err)
		}
	}
}

func TestPublishWithFSGroup(t *testing.T) {
	e := newEnv(t, nil)
	e.prov.set(func(p *testProvider) {
		p.files = func(*provider.Request) []provider.File {
			return []provider.File{{Path: "key", Mode: 0o440, Contents: []byte("k")}, {Path: "dir/cert", Contents: []byte("c")}}
		}
	})
	target := e.target("vol")
	req := publishReq("vol-g", target, "app", "team-a")
	req.VolumeCapability.GetMount().VolumeMountGroup = "2000"
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Stat(target, &st)
	if st.Mode&0o777 != rootModeWithGroup || st.Gid != 2000 {
		t.Fatalf("root mode %o gid %d", st.Mode&0o777, st.Gid)
	}
	for p, mode := range map[string]uint32{"key": 0o440, "dir/cert": 0o644} {
		unix.Stat(filepath.Join(target, p), &st)
		if st.Gid != 2000 || st.Mode&0o777 != mode {
			t.Fatalf("%s: gid %d mode %o", p, st.Gid, st.Mode&0o777)
		}
	}
	// A republish asking for another group does not silently change it.
	req.VolumeCapability.GetMount().VolumeMountGroup = "3000"
	if _, err := e.node.NodePublishVolume(context.Background(), req); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("want AlreadyExists, got %v", err)
	}
}

func TestPublishRejectsBadRequests(t *testing.T) {
	e := newEnv(t, nil)
	target := e.target("vol")
	mod := func(f func(r *csi.NodePublishVolumeRequest)) *csi.NodePublishVolumeRequest {
		r := publishReq("vol-1", target, "app", "team-a")
		f(r)
		return r
	}
	cases := []struct {
		name string
		req  *csi.NodePublishVolumeRequest
		code codes.Code
		msg  string
	}{
		{"no volume id", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }), codes.InvalidArgument, "volume id is missing"},
		{"long volume id", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = strings.Repeat("x", 129) }), codes.InvalidArgument, "CSI limit is 128"},
		{"control char id", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "a\nb" }), codes.InvalidArgument, "control characters"},
		{"no target", mod(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }), codes.InvalidArgument, "target path is missing"},
		{"relative target", mod(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "rel/path" }), codes.InvalidArgument, "not absolute"},
		{"unclean target", mod(func(r *csi.NodePublishVolumeRequest) { r.TargetPath = target + "/../vol" }), codes.InvalidArgument, "not clean"},
		{"no capability", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }), codes.InvalidArgument, "capability is missing"},
		{"block", mod(func(r *csi.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		}), codes.InvalidArgument, "block access is not supported"},
		{"fs type", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().FsType = "ext4" }), codes.InvalidArgument, `"ext4" is not supported`},
		{"mount flags", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().MountFlags = []string{"exec"} }), codes.InvalidArgument, "mount options are not supported"},
		{"bad group", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability.GetMount().VolumeMountGroup = "wheel" }), codes.InvalidArgument, "not a numeric group id"},
		{"read-write", mod(func(r *csi.NodePublishVolumeRequest) { r.Readonly = false }), codes.InvalidArgument, "set readOnly: true"},
		{"persistent", mod(func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, provider.AttrEphemeral) }), codes.InvalidArgument, "only CSI ephemeral inline volumes"},
		{"ephemeral false", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[provider.AttrEphemeral] = "false" }), codes.InvalidArgument, `is "false"`},
		{"no class", mod(func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, provider.AttrClass) }), codes.InvalidArgument, "secretProviderClass is missing"},
		{"bad class name", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[provider.AttrClass] = "../App" }), codes.InvalidArgument, "not a valid object name"},
		{"no namespace", mod(func(r *csi.NodePublishVolumeRequest) { delete(r.VolumeContext, provider.AttrPodNamespace) }), codes.InvalidArgument, "podInfoOnMount"},
		{"bad tokens", mod(func(r *csi.NodePublishVolumeRequest) { r.VolumeContext[provider.AttrTokens] = `{"aud":` }), codes.InvalidArgument, "serviceAccount.tokens is not a JSON object"},
		{"class in another namespace", publishReq("vol-1", target, "other", "team-a"), codes.NotFound, `"other" not found in namespace "team-a"`},
		{"unknown provider", publishReq("vol-1", target, "ghost", "team-a"), codes.InvalidArgument, `provider "nosuch"`},
	}
	for _, tc := range cases {
		_, err := e.node.NodePublishVolume(context.Background(), tc.req)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: want %v containing %q, got %v", tc.name, tc.code, tc.msg, err)
		}
		if m := mountsUnder(t, e.dir); len(m) != 0 {
			t.Fatalf("%s: left mounts %v", tc.name, m)
		}
		if _, err := os.Lstat(target); !os.IsNotExist(err) {
			t.Fatalf("%s: left the target behind", tc.name)
		}
	}
	if e.prov.callCount() != 0 {
		t.Fatalf("provider called %d times for bad requests", e.prov.callCount())
	}
	// Errors are counted by code, not by class or pod.
	if got := testutil.ToFloat64(e.d.metrics.Ops.WithLabelValues("publish", "InvalidArgument")); got != float64(len(cases)-1) {
		t.Fatalf("InvalidArgument count %v", got)
	}
}

// Volume attributes other than the class name never reach the parameters.
func TestAttributesDoNotOverrideClass(t *testing.T) {
	e := newEnv(t, nil)
	req := publishReq("vol-1", e.target("vol"), "app", "team-a")
	req.VolumeContext["objects"] = "evil"
	req.VolumeContext["value"] = "evil"
	req.VolumeContext["keyvaultName"] = "evil"
	req.Secrets = map[string]string{"clientid": "id"}
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	got := e.prov.lastReq
	if len(got.Parameters) != 2 || got.Parameters["objects"] != "a,b,c" || got.Parameters["value"] != "v" || got.Secrets["clientid"] != "id" {
		t.Fatalf("parameters %v secrets %v", got.Parameters, got.Secrets)
	}
}

func TestPublishRejectsBadFileSets(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TmpfsSize = 1 << 20 })
	f := func(paths ...string) []provider.File {
		var out []provider.File
		for _, p := range paths {
			out = append(out, provider.File{Path: p, Contents: []byte("x")})
		}
		return out
	}
	many := make([]provider.File, 10000)
	for i := range many {
		many[i] = provider.File{Path: fmt.Sprintf("obj-%05d", i), Contents: []byte("x")}
	}
	cases := []struct {
		name  string
		files []provider.File
		code  codes.Code
		msg   string
	}{
		{"dotdot", f("../x"), codes.InvalidArgument, `"../x" contains '..'`},
		{"absolute", f("/etc/passwd"), codes.InvalidArgument, `"/etc/passwd" is absolute`},
		{"sneaky", f("a/../../b"), codes.InvalidArgument, `"a/../../b" is not clean`},
		{"duplicate", f("a", "b", "a"), codes.InvalidArgument, `"a" appears more than once`},
		{"prefix", f("a", "a/b"), codes.InvalidArgument, `"a" is also used as the directory of "a/b"`},
		{"reserved", f("..data"), codes.InvalidArgument, "reserved"},
		{"empty", f(""), codes.InvalidArgument, "empty"},
		{"setuid mode", []provider.File{{Path: "a", Mode: 0o4755}}, codes.InvalidArgument, "only permission bits"},
		{"too large", []provider.File{{Path: "big", Contents: make([]byte, 2<<20)}}, codes.ResourceExhausted, "per-volume limit of 1048576 bytes"},
		{"10000 objects", many, codes.ResourceExhausted, "at most 4096"},
	}
	for _, tc := range cases {
		files := tc.files
		e.prov.set(func(p *testProvider) { p.files = func(*provider.Request) []provider.File { return files } })
		target := e.target("vol")
		err := e.publish("vol-1", target)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: want %v containing %q, got %v", tc.name, tc.code, tc.msg, err)
		}
		if m := mountsUnder(t, e.dir); len(m) != 0 {
			t.Fatalf("%s: left mounts %v", tc.name, m)
		}
		if entries, _ := os.ReadDir(e.dir); len(entries) != 0 {
			t.Fatalf("%s: left files next to the target: %v", tc.name, entries)
		}
		if e.d.volume("vol-1") != nil {
			t.Fatalf("%s: state kept", tc.name)
		}
	}
}

// A class whose files pass the size estimate but not the real tmpfs (here:
// many small files in deep directories fill the inodes' pages) still fails
// cleanly with ResourceExhausted.
func TestPublishENOSPCCleansUp(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TmpfsSize = 64 << 10 })
	e.d.limits.MaxBytes = 1 << 30 // defeat the estimate so the write itself hits ENOSPC
	e.prov.set(func(p *testProvider) {
		p.files = func(*provider.Request) []provider.File {
			return []provider.File{{Path: "big", Contents: make([]byte, 4<<20)}}
		}
	})
	err := e.publish("vol-1", e.target("vol"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("want ResourceExhausted, got %v", err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("left mounts %v", m)
	}
	if entries, _ := os.ReadDir(e.dir); len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}
}

func TestPublishRefusesUnsafeTargets(t *testing.T) {
	e := newEnv(t, nil)
	elsewhere := t.TempDir()
	link := e.target("link")
	os.Symlink(elsewhere, link)
	err := e.publish("vol-1", link)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "is a symlink") {
		t.Fatalf("symlink: got %v", err)
	}
	if m := mountsUnder(t, "/"); containsUnder(m, elsewhere) {
		t.Fatal("mounted through the symlink")
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
		t.Fatalf("wrote through the symlink: %v", entries)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the planted symlink was touched")
	}

	full := e.target("full")
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	if err := e.publish("vol-2", full); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("non-empty target: got %v", err)
	}
	file := e.target("file")
	os.WriteFile(file, nil, 0o644)
	if err := e.publish("vol-3", file); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file target: got %v", err)
	}
	if err := e.publish("vol-4", e.target("no/parent")); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("missing parent: got %v", err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("left mounts %v", m)
	}
}

func containsUnder(list []string, dir string) bool {
	for _, m := range list {
		if within(dir, m) {
			return true
		}
	}
	return false
}

func TestProviderErrorsKeepTheirCode(t *testing.T) {
	e := newEnv(t, nil)
	for _, perr := range []error{
		provider.PermissionDenied("identity web may not read secret db"),
		provider.Unavailable("vault is down"),
		provider.NotFound("secret db not found"),
		errors.New("plain failure"),
	} {
		e.prov.set(func(p *testProvider) { p.err = perr })
		err := e.publish("vol-1", e.target("vol"))
		want := provider.CodeOf(perr)
		if status.Code(err) != want || !strings.Contains(err.Error(), perr.Error()) || !strings.Contains(err.Error(), `class "app"`) {
			t.Errorf("want %v with %q, got %v", want, perr, err)
		}
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("left mounts %v", m)
	}
}

func TestRepublishIsIdempotent(t *testing.T) {
	e := newEnv(t, nil)
	target := e.target("vol")
	for i := 0; i < 5; i++ {
		if err := e.publish("vol-1", target); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if n := e.prov.callCount(); n != 1 {
		t.Fatalf("provider called %d times, want 1", n)
	}
	if m := mountsUnder(t, e.dir); len(m) != 1 {
		t.Fatalf("mounts %v", m)
	}
	if err := e.publish("vol-1", e.target("elsewhere")); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("other target: got %v", err)
	}
	if _, err := e.node.NodePublishVolume(context.Background(), publishReq("vol-1", target, "app", "team-b")); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("other namespace: got %v", err)
	}
	if got := testutil.ToFloat64(e.d.metrics.Ops.WithLabelValues("republish", "OK")); got != 4 {
		t.Fatalf("republish OK count %v", got)
	}
}

func TestConcurrentCallForSameVolumeIsAborted(t *testing.T) {
	e := newEnv(t, nil)
	block := make(chan struct{})
	e.prov.set(func(p *testProvider) { p.block = block })
	target := e.target("vol")
	first := make(chan error)
	go func() { first <- e.publish("vol-1", target) }()
	waitLocked(t, e, "vol-1")
	if err := e.publish("vol-1", target); status.Code(err) != codes.Aborted {
		t.Fatalf("second publish: want Aborted, got %v", err)
	}
	e.prov.set(func(p *testProvider) { p.block = nil })
	close(block)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// An unpublish that arrives while the volume's publish is running cancels
// the publish and succeeds at once: nothing a class makes the driver wait
// for or compute keeps a pod Terminating.
func TestUnpublishCancelsARunningPublish(t *testing.T) {
	e := newEnv(t, nil)
	block := make(chan struct{})
	defer close(block)
	e.prov.set(func(p *testProvider) { p.block = block })
	target := e.target("vol")
	first := make(chan error)
	go func() { first <- e.publish("vol-1", target) }()
	waitLocked(t, e, "vol-1")
	start := time.Now()
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatalf("unpublish during publish: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("unpublish took %v", d)
	}
	if err := <-first; status.Code(err) != codes.Canceled {
		t.Errorf("the cancelled publish: %v, want Canceled", err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("still mounted: %v", m)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}
	if e.d.volume("vol-1") != nil {
		t.Fatal("the cancelled volume is still known")
	}
}

func TestHundredVolumesConcurrently(t *testing.T) {
	e := newEnv(t, nil)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.publish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	if m := mountsUnder(t, e.dir); len(m) != n {
		t.Fatalf("%d mounts, want %d", len(m), n)
	}
	for i := 0; i < n; i++ {
		if got := readFile(t, filepath.Join(e.target(fmt.Sprintf("t%d", i)), "b")); got != "b=v#0" {
			t.Fatalf("volume %d: %q", i, got)
		}
	}
	if got := testutil.ToFloat64(e.d.metrics.Mounted); got != n {
		t.Fatalf("volumes_mounted %v", got)
	}
	// Unpublish while files are held open: a busy mount must not fail.
	held, err := os.Open(filepath.Join(e.target("t0"), "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.unpublish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("left %d mounts", len(m))
	}
	if got := testutil.ToFloat64(e.d.metrics.Mounted); got != 0 {
		t.Fatalf("volumes_mounted %v", got)
	}
}

func TestRotationViaRepublish(t *testing.T) {
	const interval = 400 * time.Millisecond
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now })
	target := e.target("vol")
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	// Not due yet: nothing fetched, old content.
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if e.prov.callCount() != 1 || readFile(t, filepath.Join(target, "a")) != "a=v#0" {
		t.Fatalf("refreshed before the interval: calls=%d", e.prov.callCount())
	}
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if e.prov.callCount() != 2 || readFile(t, filepath.Join(target, "a")) != "a=v#1" {
		t.Fatalf("not rotated: calls=%d a=%q", e.prov.callCount(), readFile(t, filepath.Join(target, "a")))
	}
	if got := testutil.ToFloat64(e.d.metrics.Refresh.WithLabelValues("republish", "rotated")); got != 1 {
		t.Fatalf("rotated count %v", got)
	}
	if got := e.prov.lastReq.CurrentVersions; len(got) != 3 || got[0].Version != "0" {
		t.Fatalf("current versions not passed: %v", got)
	}

	// Unchanged content: fetched, not swapped.
	genDir, _ := os.Readlink(filepath.Join(target, "..data"))
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if now, _ := os.Readlink(filepath.Join(target, "..data")); now != genDir || e.prov.callCount() != 3 {
		t.Fatalf("unchanged content swapped (%s -> %s) or not fetched (%d)", genDir, now, e.prov.callCount())
	}

	// A failing backend: republish still OK, content kept, failure counted.
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down"); p.gen = 2 })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatalf("republish with failing backend: %v", err)
	}
	if readFile(t, filepath.Join(target, "a")) != "a=v#1" {
		t.Fatal("last good content lost")
	}
	if got := testutil.ToFloat64(e.d.metrics.Refresh.WithLabelValues("republish", "failed")); got != 1 {
		t.Fatalf("failed count %v", got)
	}
	// The backend recovers: the next due republish rotates.
	e.prov.set(func(p *testProvider) { p.err = nil })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(target, "a")) != "a=v#2" {
		t.Fatal("not rotated after recovery")
	}
	// The class is looked up again on refresh: a parameter edit applies.
	e.classes["team-a/app"].Parameters = map[string]string{"objects": "a,z", "value": "w"}
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(target, "z")) != "z=w#2" {
		t.Fatal("class edit not applied")
	}
	if _, err := os.Lstat(filepath.Join(target, "b")); !os.IsNotExist(err) {
		t.Fatal("removed object still present")
	}
}

func TestRestartRecovery(t *testing.T) {
	clock := newClock()
	hooks := &recordingHook{}
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = 100*time.Millisecond, clock.Now })
	for i := 0; i < 3; i++ {
		if err := e.publish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{
		NodeID: "node-1", Classes: e.classes, RotationInterval: 100 * time.Millisecond, Now: clock.Now, RecoverUnder: e.dir,
		Providers: func(string) (provider.Provider, error) { return e.prov, nil },
		Logger:    e.d.log, Registerer: e.reg, Hooks: []hook.Hook{hooks},
	}
	e.stop()

	// A new driver (the process restarted) finds all three.
	e.start(cfg)
	for i := 0; i < 3; i++ {
		v := e.d.volume(fmt.Sprintf("vol-%d", i))
		if v == nil || v.target != e.target(fmt.Sprintf("t%d", i)) || v.class != "app" || v.pod.Namespace != "team-a" || len(v.versions) != 3 {
			t.Fatalf("volume %d not recovered: %+v", i, v)
		}
	}
	if got := testutil.ToFloat64(e.d.metrics.Mounted); got != 3 {
		t.Fatalf("volumes_mounted %v", got)
	}
	// Republish with tokens refreshes (the recovered clock is honoured).
	e.prov.set(func(p *testProvider) { p.gen = 7 })
	clock.Advance(100 * time.Millisecond)
	req := publishReq("vol-0", e.target("t0"), "app", "team-a")
	req.VolumeContext[provider.AttrTokens] = `{"api":{"token":"tok","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(e.target("t0"), "a")) != "a=v#7" || e.prov.lastReq.Tokens["api"].Token != "tok" {
		t.Fatal("recovered volume not refreshed with the new tokens")
	}
	// A recovered volume's changed content is a change, not a first
	// publish (a restart on change must not miss it).
	if got := hooks.take(); !slices.Equal(got, []string{"changed vol-0 team-a/app team-a test a=a=v#7,b=b=v#7,c=c=v#7"}) {
		t.Fatalf("hooks after the refresh of a recovered volume: %q", got)
	}
	for i := 0; i < 3; i++ {
		if err := e.unpublish(fmt.Sprintf("vol-%d", i), e.target(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("left mounts %v", m)
	}
}

// A secretfs tmpfs whose metadata is lost can still be unpublished.
func TestUnpublishUnknownMount(t *testing.T) {
	e := newEnv(t, nil)
	target := e.target("orphan")
	os.Mkdir(target, 0o750)
	if err := tmpfs.Mount(target, tmpfs.Options{SizeBytes: 1 << 16, Mode: 0o750, GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := e.unpublish("orphan", target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatal("target left")
	}
}

func TestUnpublishValidation(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		id, target, msg string
	}{
		{"", e.target("x"), "volume id is missing"},
		{"v", "", "target path is missing"},
		{"v", "relative", "not absolute"},
	} {
		err := e.unpublish(tc.id, tc.target)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: got %v", tc, err)
		}
	}
}

// A mounted volume the driver lost track of is adopted on republish, not
// refused as "target already mounted".
func TestRepublishAdoptsUnknownVolume(t *testing.T) {
	e := newEnv(t, nil)
	target := e.target("vol")
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	e.d.mu.Lock()
	delete(e.d.vols, "vol-1") // lost track of, still mounted
	e.d.mu.Unlock()
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if e.d.volume("vol-1") == nil || e.prov.callCount() != 1 {
		t.Fatalf("not adopted (fetches: %d)", e.prov.callCount())
	}
	// Another volume id at the same mounted target is refused.
	if err := e.publish("vol-2", target); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "already a mount point") {
		t.Fatalf("other volume at a mounted target: %v", err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 1 {
		t.Fatalf("mounts %v", m)
	}
}

// With CSIDriver serviceAccountTokenInSecrets: true kubelet sends the tokens
// in the request's secrets: the backend gets them as tokens, and the
// nodePublishSecretRef data it sees no longer carries them.
func TestTokensFromSecrets(t *testing.T) {
	e := newEnv(t, nil)
	req := publishReq("vol-s", e.target("s"), "app", "team-a")
	req.Secrets = map[string]string{
		provider.AttrTokens: `{"":{"token":"pod-token","expirationTimestamp":"2030-01-01T00:00:00Z"}}`,
		"clientsecret":      "sp-secret",
	}
	if _, err := e.node.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	got := e.prov.lastReq
	if got.Tokens[""].Token != "pod-token" {
		t.Fatalf("token not taken from secrets: %+v", got.Tokens)
	}
	if _, ok := got.Secrets[provider.AttrTokens]; ok || got.Secrets["clientsecret"] != "sp-secret" || len(got.Secrets) != 1 {
		t.Fatalf("secrets seen by the backend: %v keys", len(got.Secrets))
	}
	if err := e.unpublish("vol-s", e.target("s")); err != nil {
		t.Fatal(err)
	}

	bad := publishReq("vol-b", e.target("b"), "app", "team-a")
	bad.Secrets = map[string]string{provider.AttrTokens: `{"":`}
	_, err := e.node.NodePublishVolume(context.Background(), bad)
	if status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), `"":`) {
		t.Fatalf("bad tokens in secrets: %v", err)
	}
}

// waitLocked waits until a call holds the lock of volume id: Lock gives up
// at once (cancel is closed) while the lock is held; a free lock it takes
// and gives back.
func waitLocked(t *testing.T, e *env, id string) {
	t.Helper()
	waitFor(t, "a call to hold the lock of "+id, func() bool {
		cancel := make(chan struct{})
		close(cancel)
		if e.d.locks.Lock(id, cancel) {
			e.d.locks.Unlock(id)
			return false
		}
		return true
	})
}
