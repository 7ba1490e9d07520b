package budget

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

func TestReserveRelease(t *testing.T) {
	b := New(100)
	if err := b.Reserve("a", 60); err != nil {
		t.Fatal(err)
	}
	err := b.Reserve("b", 50)
	if provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), Flag) {
		t.Fatalf("over the budget: %v", err)
	}
	if b.Used() != 60 || b.Held("b") != 0 {
		t.Fatalf("a refused reservation was kept: used %d", b.Used())
	}
	// Growing one's own reservation counts only the difference.
	if err := b.Reserve("a", 100); err != nil {
		t.Fatal(err)
	}
	if err := b.Reserve("a", 101); provider.CodeOf(err) != codes.ResourceExhausted || b.Held("a") != 100 {
		t.Fatalf("grow past the limit: %v, held %d", err, b.Held("a"))
	}
	// Shrinking always works.
	if err := b.Reserve("a", 10); err != nil || b.Used() != 10 {
		t.Fatalf("shrink: %v, used %d", err, b.Used())
	}
	b.Release("a")
	b.Release("never")
	if b.Used() != 0 || b.Held("a") != 0 {
		t.Fatalf("after release: used %d", b.Used())
	}
}

func TestForMemoryLimit(t *testing.T) {
	// The shipped DaemonSet limit: 128 MiB leaves 64 MiB for volumes.
	if b, err := ForMemoryLimit(128 << 20); err != nil || b != 64<<20 {
		t.Fatalf("128Mi: %d, %v", b, err)
	}
	if b, err := ForMemoryLimit(1 << 30); err != nil || b != 768<<20 {
		t.Fatalf("1Gi: %d, %v", b, err)
	}
	if _, err := ForMemoryLimit(32 << 20); err == nil || !strings.Contains(err.Error(), Flag) {
		t.Fatalf("32Mi: %v", err)
	}
}

// fakeHierarchy writes a /proc/self/cgroup and a mountinfo that put this
// "process" in <root>/kubepods/pod1/ctr of a v1 or v2 hierarchy mounted at
// root, with the given limits on the way up.
func fakeHierarchy(t *testing.T, v2 bool, limits map[string]string) (procCgroup, mountinfo string) {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "cgroup")
	file, fstype, opts, line := "memory.limit_in_bytes", "cgroup", "rw,memory", "4:memory:/kubepods/pod1/ctr\n3:cpu,cpuacct:/kubepods/pod1/ctr\n0::/\n"
	if v2 {
		file, fstype, opts, line = "memory.max", "cgroup2", "rw", "0::/kubepods/pod1/ctr\n"
	}
	for rel, v := range limits {
		d := filepath.Join(root, rel)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, file), []byte(v+"\n"), 0o644)
	}
	procCgroup = filepath.Join(dir, "cgroup.txt")
	mountinfo = filepath.Join(dir, "mountinfo")
	os.WriteFile(procCgroup, []byte(line), 0o644)
	os.WriteFile(mountinfo, []byte(fmt.Sprintf(
		"25 1 0:22 / / rw - ext4 /dev/root rw\n30 25 0:26 / %s rw,nosuid - %s %s %s\n", root, fstype, fstype, opts)), 0o644)
	return procCgroup, mountinfo
}

func TestMemoryLimitV1AndV2(t *testing.T) {
	for _, v2 := range []bool{false, true} {
		none := "9223372036854771712"
		if v2 {
			none = "max"
		}
		pc, mi := fakeHierarchy(t, v2, map[string]string{".": none, "kubepods": none, "kubepods/pod1": "268435456", "kubepods/pod1/ctr": "134217728"})
		got, where, err := MemoryLimit(pc, mi)
		if err != nil || got != 128<<20 || !strings.HasSuffix(where, "kubepods/pod1/ctr/memory."+map[bool]string{false: "limit_in_bytes", true: "max"}[v2]) {
			t.Errorf("v2=%v: %d from %s, %v", v2, got, where, err)
		}
		// A parent's lower limit binds the container too.
		pc, mi = fakeHierarchy(t, v2, map[string]string{"kubepods/pod1": "67108864", "kubepods/pod1/ctr": none})
		if got, _, err := MemoryLimit(pc, mi); err != nil || got != 64<<20 {
			t.Errorf("v2=%v parent limit: %d, %v", v2, got, err)
		}
		pc, mi = fakeHierarchy(t, v2, map[string]string{"kubepods/pod1/ctr": none})
		if got, _, err := MemoryLimit(pc, mi); err != nil || got != 0 {
			t.Errorf("v2=%v unlimited: %d, %v", v2, got, err)
		}
	}
}

// On the machine itself: this process's own cgroup is found and read.
func TestMemoryLimitOfThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/cgroup"); err != nil {
		t.Skip("no /proc/self/cgroup")
	}
	limit, where, err := MemoryLimit("/proc/self/cgroup", "/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("memory limit %d from %s", limit, where)
	if b, src, err := Default(); err != nil || b <= 0 || src == "" {
		t.Fatalf("Default: %d %q %v", b, src, err)
	}
}

func TestParseProcCgroup(t *testing.T) {
	cg := parseProcCgroup([]byte("12:memory:/a/b\n1:name=systemd:/x\n0::/c\n"))
	if !cg.hasV1 || cg.v1 != "/a/b" || !cg.hasV2 || cg.v2 != "/c" {
		t.Fatalf("%+v", cg)
	}
	if cg := parseProcCgroup([]byte("0::/only\n")); cg.hasV1 || cg.v2 != "/only" {
		t.Fatalf("%+v", cg)
	}
}

func FuzzParseProcCgroup(f *testing.F) {
	f.Add([]byte("12:memory:/a/b\n0::/c\n"))
	f.Add([]byte("4:cpu,memory:/x\n"))
	f.Add([]byte("0::/\n"))
	f.Add([]byte(":::\n::\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cg := parseProcCgroup(data)
		if cg.hasV1 && !strings.HasPrefix(cg.v1, "/") || cg.hasV2 && !strings.HasPrefix(cg.v2, "/") {
			t.Fatalf("relative cgroup path from %q: %+v", data, cg)
		}
	})
}

func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"max\n", "134217728\n", "9223372036854771712", "-1", "18446744073709551615", "", "12a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, ok := parseLimit(s); n < 0 || n >= unlimited || !ok && n != 0 {
			t.Fatalf("parseLimit(%q) = %d, %v", s, n, ok)
		}
	})
}

// The observer sees every change, whoever makes it.
func TestObserve(t *testing.T) {
	b := New(100)
	var seen []int64
	b.Observe(func(used int64) { seen = append(seen, used) })
	_ = b.Reserve("a", 10)
	b.Hold("b", 5)
	_ = b.Reserve("a", 200) // refused: no change
	b.Release("a")
	if want := []int64{0, 10, 15, 5}; !slices.Equal(seen, want) {
		t.Fatalf("observed %v, want %v", seen, want)
	}
}

// A Charge holds the current and the new generation side by side while it
// writes, then what was written and the generation it replaced (the atomic
// writer keeps it until the next change), or what it held before when the
// write did not happen.
func TestCharge(t *testing.T) {
	b := New(100)
	if err := b.Reserve("v", 30); err != nil {
		t.Fatal(err)
	}
	c := b.Charge("v", 50, `class "c" in namespace "n"`)
	if err := c.Reserve(); err != nil || b.Used() != 80 {
		t.Fatalf("reserve: %v, used %d, want 80", err, b.Used())
	}
	if err := c.Reserve(); err != nil || b.Used() != 80 {
		t.Fatalf("a second reserve holds the same: %v, used %d", err, b.Used())
	}
	c.Settle(true)
	if b.Used() != 80 || b.Held("v") != 80 {
		t.Fatalf("settled written: used %d, held %d, want 80 (the new 50 and the previous 30)", b.Used(), b.Held("v"))
	}

	c = b.Charge("v", 60, `class "c" in namespace "n"`) // current 50 + 60 > 100
	err := c.Reserve()
	if provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `class "c" in namespace "n"`) {
		t.Fatalf("over the budget: %v", err)
	}
	c.Settle(false)
	if b.Used() != 80 {
		t.Fatalf("settled not written: used %d, want 80", b.Used())
	}

	// The next change: the previous generation (30) goes before the new
	// one is written, the current one (50) stays beside it.
	c = b.Charge("v", 40, `class "c" in namespace "n"`)
	if err := c.Reserve(); err != nil || b.Used() != 90 {
		t.Fatalf("reserve beside the current generation: %v, used %d, want 90", err, b.Used())
	}
	c.Settle(true)
	if b.Held("v") != 90 {
		t.Fatalf("held %d, want 90 (the new 40 and the previous 50)", b.Held("v"))
	}
	// A volume found mounted after a restart: all it holds may be current.
	b.Release("v")
	b.Hold("w", 10)
	c = b.Charge("w", 5, "x")
	if err := c.Reserve(); err != nil || b.Held("w") != 15 {
		t.Fatalf("after Hold: %v, held %d, want 15", err, b.Held("w"))
	}
	b.Release("w")
	if b.Used() != 0 || len(b.newest) != 0 {
		t.Fatalf("released: used %d, generations known %v", b.Used(), b.newest)
	}

	var none *Budget
	nc := none.Charge("v", 1<<40, "x")
	if err := nc.Reserve(); err != nil {
		t.Fatalf("no budget refuses: %v", err)
	}
	nc.Settle(true)
}
