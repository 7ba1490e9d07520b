package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// Deep paths, many directories and long top-level names are refused before
// anything is mounted, with the flag to raise; within the caps they mount.
func TestVolumeShapeLimits(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxDirs = 8; c.MaxDepth = 4 })
	long := strings.Repeat("n", 200)
	for name, tc := range map[string]struct {
		files []provider.File
		flag  string
	}{
		"deep":  {[]provider.File{{Path: "a/b/c/d/e", Contents: []byte("x")}}, "--max-depth"},
		"dirs":  {dirFiles(9), "--max-dirs"},
		"links": {longNames(long, 1500), "--tmpfs-size"}, // 1,500 one-byte files: a page of data and a page of link each
	} {
		e.prov.set(func(p *testProvider) { p.files = func(*provider.Request) []provider.File { return tc.files } })
		target := e.target(name)
		err := e.publish("vol-"+name, target)
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), tc.flag) {
			t.Fatalf("%s: want ResourceExhausted naming %s, got %v", name, tc.flag, err)
		}
		if m := mountsUnder(t, e.dir); len(m) != 0 {
			t.Fatalf("%s: refused volume mounted %v", name, m)
		}
	}
	// At the caps: 4 levels, 8 directories.
	e.prov.set(func(p *testProvider) {
		p.files = func(*provider.Request) []provider.File {
			return append(dirFiles(5), provider.File{Path: "x/y/z/f", Contents: []byte("x")}) // 5 + 3 directories
		}
	})
	if err := e.publish("vol-ok", e.target("ok")); err != nil {
		t.Fatal(err)
	}
}

func dirFiles(n int) []provider.File {
	var files []provider.File
	for i := range n {
		files = append(files, provider.File{Path: fmt.Sprintf("d%d/f", i), Contents: []byte("x")})
	}
	return files
}

func longNames(prefix string, n int) []provider.File {
	var files []provider.File
	for i := range n {
		files = append(files, provider.File{Path: fmt.Sprintf("%s%d", prefix, i), Contents: []byte("x")})
	}
	return files
}

// The backend is told the volume's limits, so it stops reading at them.
func TestRequestCarriesLimits(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TmpfsSize = 1 << 20; c.MaxFiles = 7 })
	if err := e.publish("vol-1", e.target("t")); err != nil {
		t.Fatal(err)
	}
	if l := e.prov.lastReq.Limits; l.MaxBytes != 1<<20 || l.MaxFiles != 7 {
		t.Fatalf("limits %+v", l)
	}
}

// The node budget counts every volume's pages: the volume that does not fit
// is refused with ResourceExhausted naming the flag and mounts nothing; an
// unpublish makes room again.
func TestNodeBudget(t *testing.T) {
	const fileSize = 64 << 10
	big := func(*provider.Request) []provider.File {
		return []provider.File{{Path: "a", Contents: make([]byte, fileSize)}, {Path: "b", Contents: make([]byte, fileSize)}}
	}
	// A volume holds 2 data pages-worth files, the metadata page and (with
	// the cache) the cached content: 4*64 KiB + 4 KiB. Room for 3.
	perVolume := int64(4*fileSize + pageSize)
	e := newEnv(t, func(c *Config) { c.NodeBudget = 3*perVolume + perVolume/2 })
	e.prov.set(func(p *testProvider) { p.files = big })
	for i := range 3 {
		if err := e.publish(fmt.Sprint("vol-", i), e.target(fmt.Sprint(i))); err != nil {
			t.Fatalf("volume %d: %v", i, err)
		}
	}
	if used := e.d.budget.Used(); used != 3*perVolume {
		t.Fatalf("budget used %d, want %d", used, 3*perVolume)
	}
	err := e.publish("vol-3", e.target("3"))
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--node-budget") {
		t.Fatalf("4th volume: %v", err)
	}
	if m := mountsUnder(t, e.dir); len(m) != 3 {
		t.Fatalf("mounts %v", m)
	}
	if err := e.unpublish("vol-0", e.target("0")); err != nil {
		t.Fatal(err)
	}
	if err := e.publish("vol-3", e.target("3")); err != nil {
		t.Fatalf("after an unpublish: %v", err)
	}
	// A rotation needs room for the old and the new generation side by
	// side; without it the volume keeps its content and the refresh fails.
	e.prov.set(func(p *testProvider) {
		p.files = func(*provider.Request) []provider.File {
			return []provider.File{{Path: "a", Contents: make([]byte, fileSize)}, {Path: "b", Contents: []byte(strings.Repeat("n", fileSize))}}
		}
	})
	v := e.d.volume("vol-1")
	e.d.cache.Invalidate(v.id, time.Now())
	e.d.locks.Lock(v.id, nil)
	_, err = e.d.apply(context.Background(), v, v.req)
	e.d.locks.Unlock(v.id)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("rotation over the budget: %v", err)
	}
	if got := readFileT(t, filepath.Join(v.target, "b")); len(got) != fileSize {
		t.Fatalf("content changed after a refused rotation: %d bytes", len(got))
	}
	if e.d.budget.Used() != 3*perVolume {
		t.Fatalf("budget used %d after a refused rotation", e.d.budget.Used())
	}
	// Unchanged content needs no second generation: no room needed.
	e.prov.set(func(p *testProvider) { p.files = big })
	e.d.cache.Invalidate(v.id, time.Now())
	e.d.locks.Lock(v.id, nil)
	_, err = e.d.apply(context.Background(), v, v.req)
	e.d.locks.Unlock(v.id)
	if err != nil {
		t.Fatalf("unchanged refresh on a full node: %v", err)
	}

	// With room, a rotation writes the new generation and keeps the one it
	// replaced (for a reader that resolved it just before the swap) until
	// the next refresh; the budget counts both until then.
	if err := e.unpublish("vol-2", e.target("2")); err != nil {
		t.Fatal(err)
	}
	refresh := func(files func(*provider.Request) []provider.File) {
		t.Helper()
		e.prov.set(func(p *testProvider) { p.files = files })
		e.d.cache.Invalidate(v.id, time.Now())
		e.d.locks.Lock(v.id, nil)
		_, err := e.d.apply(context.Background(), v, v.req)
		e.d.locks.Unlock(v.id)
		if err != nil {
			t.Fatal(err)
		}
	}
	refresh(func(*provider.Request) []provider.File {
		return []provider.File{{Path: "a", Contents: make([]byte, fileSize)}, {Path: "b", Contents: []byte(strings.Repeat("n", fileSize))}}
	})
	if got := e.d.budget.Held(v.id); got != 2*perVolume {
		t.Fatalf("after a rotation the volume holds %d in the budget, want %d (the new files and the kept ones)", got, 2*perVolume)
	}
	if used, _, err := tmpfs.Usage(v.target); err != nil || used > 2*perVolume {
		t.Fatalf("the tmpfs holds %d bytes, more than the budget counts (%d): %v", used, 2*perVolume, err)
	}
	refresh(func(*provider.Request) []provider.File {
		return []provider.File{{Path: "a", Contents: make([]byte, fileSize)}, {Path: "b", Contents: []byte(strings.Repeat("n", fileSize))}}
	})
	if got := e.d.budget.Held(v.id); got != perVolume {
		t.Fatalf("after the next, unchanged, refresh the volume holds %d in the budget, want %d", got, perVolume)
	}
}

func readFileT(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A driver that died between mounting the tmpfs and writing the metadata
// left a secretfs tmpfs with some files and no metadata at the target.
// kubelet's retry must get a correct volume, not "already a mount point".
func TestPublishRedoesAnInterruptedPublish(t *testing.T) {
	e := newEnv(t, nil)
	target := e.target("crashed")
	if err := os.Mkdir(target, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := tmpfs.Mount(target, tmpfs.Options{SizeBytes: 1 << 20, Mode: 0o755, GID: -1}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "partial"), []byte("half a secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.publish("vol-1", target); err != nil {
		t.Fatalf("publish over an interrupted publish: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target, "partial")); !os.IsNotExist(err) {
		t.Fatalf("the partial file survived: %v", err)
	}
	if got := string(readFileT(t, filepath.Join(target, "a"))); got != "a=v#0" {
		t.Fatalf("a = %q", got)
	}
	if m := mountsUnder(t, e.dir); len(m) != 1 {
		t.Fatalf("mounts %v: the old tmpfs is still stacked below", m)
	}
	// Another file system at a target is never ours to unmount.
	other := e.target("other")
	os.Mkdir(other, 0o750)
	if err := unixMount("other", other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(other, unix.MNT_DETACH) })
	if err := e.publish("vol-2", other); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a foreign tmpfs at the target: %v", err)
	}
}

// unixMount mounts a tmpfs that is not secretfs's at dir.
func unixMount(source, dir string) error {
	return unix.Mount(source, dir, "tmpfs", 0, "size=64k")
}

// After a restart the volumes found mounted count in the node budget with
// the pages they hold: a new volume does not fit in room they already use.
func TestNodeBudgetAfterRestart(t *testing.T) {
	big := func(*provider.Request) []provider.File {
		return []provider.File{{Path: "a", Contents: make([]byte, 256<<10)}}
	}
	e := newEnv(t, func(c *Config) { c.NodeBudget = 1 << 20; c.DisableCache = true })
	e.prov.set(func(p *testProvider) { p.files = big })
	for i := range 3 {
		if err := e.publish(fmt.Sprint("vol-", i), e.target(fmt.Sprint(i))); err != nil {
			t.Fatalf("volume %d: %v", i, err)
		}
	}
	cfg := Config{
		NodeID: "node-1", Classes: e.classes, RecoverUnder: e.dir, NodeBudget: 1 << 20, DisableCache: true,
		Providers: func(string) (provider.Provider, error) { return e.prov, nil },
		Logger:    e.d.log, Registerer: e.reg,
	}
	used := e.d.budget.Used()
	e.stop()
	e.start(cfg)
	// Recovery counts what the tmpfs holds: data, metadata, and links.
	if got := e.d.budget.Used(); got < used || got > used+3*2*pageSize {
		t.Fatalf("after the restart the budget counts %d bytes; before it %d", got, used)
	}
	if err := e.publish("vol-3", e.target("3")); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 4th volume after the restart: %v", err)
	}
}
