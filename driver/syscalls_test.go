package driver

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/test/ci"
)

// The system calls of one volume lifecycle (publish of the bench class, 5
// files, then unpublish), counted by strace over 20 lifecycles of the
// handlers called in-process, so no transport is counted. Each call is
// needed; README "What it costs" says why.
var lifecycleSyscalls = map[string]int{
	"mkdirat":    2, // the target; the generation directory
	"openat":     8, // target (O_PATH, to mount on), generation dir, 5 files, metadata file
	"fsopen":     1,
	"fsconfig":   6, // source, size, mode, nr_inodes, noswap, create
	"fsmount":    1,
	"move_mount": 1,
	"fstatfs":    1,  // the new mount is a tmpfs, checked on its own descriptor
	"write":      6,  // 5 files, metadata
	"close":      10, // target, fs context, mount root, generation dir, 5 files, metadata file
	"symlinkat":  6,  // 5 top-level links, ..data_tmp
	"renameat":   2,  // ..data swap, metadata swap
	"umount2":    1,
	"unlinkat":   1, // rmdir of the target
}

// counted are the system calls the test counts: every one a lifecycle
// could make on the way to the files, so an extra lookup shows.
const counted = "mkdirat,mkdir,openat,open,fsopen,fsconfig,fsmount,move_mount,fstatfs,statfs,write,close," +
	"symlinkat,renameat,renameat2,umount2,unlinkat,rmdir,statx,newfstatat,fstat,readlinkat,getdents64,fchownat,fchmod,fchmodat,mount,faccessat2,faccessat"

// TestLifecycleSyscalls runs lifecycles in a child of this test binary
// under strace and checks the system calls of each against
// lifecycleSyscalls: one more lookup, open or statfs on the path fails it.
func TestLifecycleSyscalls(t *testing.T) {
	if os.Getenv("SECRETFS_SYSCALL_CHILD") != "" {
		runLifecycles(t)
		return
	}
	needRoot(t)
	strace, err := exec.LookPath("strace")
	if err != nil {
		ci.Missing(t, "strace is needed to count system calls (apt-get install strace)")
	}
	out := filepath.Join(t.TempDir(), "strace.out")
	cmd := exec.Command(strace, "-f", "-qq", "-o", out, "-e", "trace="+counted,
		os.Args[0], "-test.run", "^TestLifecycleSyscalls$", "-test.count", "1")
	cmd.Env = append(os.Environ(), "SECRETFS_SYSCALL_CHILD=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := countBetweenMarkers(string(b))
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range got {
		if n%syscallLifecycles != 0 {
			t.Errorf("%s: %d calls over %d lifecycles, not a whole number per lifecycle", name, n, syscallLifecycles)
		}
		got[name] = n / syscallLifecycles
	}
	total, want := 0, 0
	for name, n := range got {
		total += n
		if n != lifecycleSyscalls[name] {
			t.Errorf("%s: %d per lifecycle, want %d", name, n, lifecycleSyscalls[name])
		}
	}
	for name, n := range lifecycleSyscalls {
		want += n
		if _, ok := got[name]; !ok {
			t.Errorf("%s: 0 per lifecycle, want %d", name, n)
		}
	}
	t.Logf("%d system calls per lifecycle (want %d): %v", total, want, got)
}

const syscallLifecycles = 20

var (
	markBegin = "/secretfs-syscall-count-begin"
	markEnd   = "/secretfs-syscall-count-end"
	// "1234  openat(AT_FDCWD, ...) = 3" or "1234  <... openat resumed>..."
	straceCall = regexp.MustCompile(`^\d+\s+([a-z0-9_]+)\(`)
	// The Go runtime waking its network poller (an eventfd): not the
	// driver's, and as many as the scheduler happens to need.
	netpollBreak = regexp.MustCompile(`^\d+\s+write\(\d+, "\\1\\0\\0\\0\\0\\0\\0\\0", 8\)`)
)

// runLifecycles is the child: one warm-up lifecycle, then the counted
// ones between two marker calls (faccessat on paths that do not exist).
func runLifecycles(t *testing.T) {
	e := newBenchEnv(t)
	ctx := context.Background()
	cycle := func(i int) {
		id, target := "vol-"+strconv.Itoa(i), e.target("t"+strconv.Itoa(i))
		if _, err := e.d.NodePublishVolume(ctx, publishReq(id, target, "app", "team-a")); err != nil {
			t.Fatal(err)
		}
		if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	cycle(-1)
	unix.Access(markBegin, unix.F_OK)
	for i := range syscallLifecycles {
		cycle(i)
	}
	unix.Access(markEnd, unix.F_OK)
}

// countBetweenMarkers counts the calls strace logged between the markers,
// by name.
func countBetweenMarkers(log string) (map[string]int, error) {
	got := map[string]int{}
	in := false
	for line := range strings.Lines(log) {
		switch {
		case strings.Contains(line, markBegin):
			in = true
			continue
		case strings.Contains(line, markEnd):
			return got, nil
		case !in || strings.Contains(line, "resumed>") || netpollBreak.MatchString(line):
			continue
		}
		if m := straceCall.FindStringSubmatch(line); m != nil {
			got[m[1]]++
		}
	}
	return nil, errNoMarkers
}

var errNoMarkers = errors.New("strace log lacks the markers")

// maxLifecycleAllocs bounds the heap allocations of one lifecycle of the
// bench class through the handlers (BenchmarkNodePublishDirect's allocs/op;
// gRPC's own are not counted): 154 measured, of which the test provider
// and the request the test builds make some 30.
const maxLifecycleAllocs = 160

func TestLifecycleAllocs(t *testing.T) {
	e := newBenchEnv(t)
	ctx := context.Background()
	i := 0
	n := testing.AllocsPerRun(50, func() {
		i++
		id, target := "vol-"+strconv.Itoa(i), e.target("t"+strconv.Itoa(i))
		if _, err := e.d.NodePublishVolume(ctx, publishReq(id, target, "app", "team-a")); err != nil {
			t.Fatal(err)
		}
		if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	})
	if n > maxLifecycleAllocs {
		t.Errorf("%.0f allocations per lifecycle, want at most %d", n, maxLifecycleAllocs)
	}
	t.Logf("%.0f allocations per lifecycle", n)
}
