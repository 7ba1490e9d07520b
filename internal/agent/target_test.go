package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
)

// attacker is the unprivileged local user of these tests.
const attacker = 65534

// gated holds the first fetch until the test lets it go: the agent has
// checked the target by then and has not mounted yet.
type gated struct {
	provider.Provider
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func newGated() *gated {
	return &gated{Provider: fake.New(fake.Options{}), entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gated) Fetch(ctx context.Context, req *provider.Request) (*provider.Result, error) {
	g.once.Do(func() {
		close(g.entered)
		<-g.release
	})
	return g.Provider.Fetch(ctx, req)
}

// asAttacker runs a shell command as the unprivileged user.
func asAttacker(t *testing.T, script string) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attacker, Gid: attacker, Groups: []uint32{}}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("as uid %d: %s: %v: %s", attacker, script, err, out)
	}
}

// raceDir is a directory every user can reach, with a victim directory of
// root's (holding one file) and home, a directory of the attacker's.
func raceDir(t *testing.T) (dir, victim, home string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "secretfs-race-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	victim = filepath.Join(dir, "victim")
	home = filepath.Join(dir, "home")
	for _, d := range []string{victim, home} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(victim, "keep"), []byte("root's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, attacker, attacker); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever the agent did, leave nothing mounted and nothing behind.
		detachUnder(dir)
		os.RemoveAll(dir)
	})
	return dir, victim, home
}

// detachUnder detaches every mount at or below dir.
func detachUnder(dir string) {
	infos, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(infos), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			_ = unix.Unmount(f[4], unix.MNT_DETACH)
		}
	}
}

// mountsUnder lists the mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	infos, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(infos), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// raceAgent runs the agent at target with a gated backend, runs swap while
// the first fetch is held (after the target was checked, before the mount),
// and returns a stop function that returns the agent's result, and the
// agent's first-publish result (nil: mounted).
func raceAgent(t *testing.T, dir, target, swap string) (stop func() error, mountErr error) {
	t.Helper()
	classFile := filepath.Join(dir, "class.yaml")
	if err := os.WriteFile(classFile, []byte(testClass), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGated()
	ctx, cancel := context.WithCancel(context.Background())
	mounted := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			ClassFile: classFile, Target: target, Interval: time.Hour,
			Providers: func(string) (provider.Provider, error) { return g, nil },
			Mounted:   func() { close(mounted) },
		})
	}()
	select {
	case <-g.entered:
	case err := <-done:
		cancel()
		t.Fatalf("agent stopped before fetching: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("agent did not fetch")
	}
	asAttacker(t, swap)
	close(g.release)
	select {
	case <-mounted:
		return func() error { cancel(); return <-done }, nil
	case err := <-done:
		cancel()
		return func() error { return err }, err
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("agent neither mounted nor failed")
	}
	return nil, nil
}

// assertUntouched checks that victim is no mount point and still shows its
// own file, and that nothing is mounted below dir.
func assertUntouched(t *testing.T, dir, victim string) {
	t.Helper()
	if m, err := tmpfs.IsMountPoint(victim); err != nil || m {
		t.Errorf("victim %s is a mount point (%v)", victim, err)
	}
	if b, err := os.ReadFile(filepath.Join(victim, "keep")); err != nil || string(b) != "root's" {
		t.Errorf("victim's own file: %q %v", b, err)
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("still mounted: %v", m)
	}
}

// Issue 21: the attacker owns the target's parent and swaps the target for
// a symlink to a directory of root's between the agent's check and its
// mount. The victim is never mounted over, and nothing stays mounted.
func TestAgentTargetSwappedForSymlink(t *testing.T) {
	requireRoot(t)
	dir, victim, home := raceDir(t)
	target := filepath.Join(home, "secrets")
	asAttacker(t, "mkdir "+target)
	stop, mountErr := raceAgent(t, dir, target, "mv "+target+" "+target+".old && ln -s "+victim+" "+target)
	if mountErr == nil {
		t.Error("the agent mounted through a swapped-in symlink")
	}
	err := stop()
	t.Logf("agent: %v", err)
	assertUntouched(t, dir, victim)
}

// The attacker owns the target's grandparent: it swaps the parent for a
// symlink to the victim's parent. The agent mounts in the directory it
// checked (now renamed), never at the victim, and cleans up there.
func TestAgentTargetParentSwapped(t *testing.T) {
	requireRoot(t)
	dir, victim, home := raceDir(t)
	parent := filepath.Join(home, "app")
	asAttacker(t, "mkdir "+parent)
	// The victim is "secrets" in a directory of root's.
	target := filepath.Join(parent, filepath.Base(victim))
	stop, mountErr := raceAgent(t, dir, target, "mv "+parent+" "+parent+".old && ln -s "+dir+" "+parent)
	if mountErr == nil {
		// The mount is where the agent checked: the renamed parent.
		if err := tmpfs.Verify(filepath.Join(parent+".old", filepath.Base(victim))); err != nil {
			t.Errorf("mounted, but not in the checked directory: %v", err)
		}
	}
	if m, err := tmpfs.IsMountPoint(victim); err != nil || m {
		t.Errorf("victim %s is a mount point (%v)", victim, err)
	}
	err := stop()
	t.Logf("agent: %v", err)
	assertUntouched(t, dir, victim)
}

// The attacker swaps the target for another directory of its own: the
// driver would mount there, at the target's path but not on the directory
// the agent checked; the agent refuses it and leaves nothing mounted.
func TestAgentTargetSwappedForAnotherDirectory(t *testing.T) {
	requireRoot(t)
	dir, victim, home := raceDir(t)
	target := filepath.Join(home, "secrets")
	asAttacker(t, "mkdir "+target)
	stop, mountErr := raceAgent(t, dir, target, "mv "+target+" "+target+".old && mkdir "+target)
	if mountErr == nil || !strings.Contains(mountErr.Error(), "replaced") {
		t.Errorf("want the swapped target refused, got %v", mountErr)
	}
	stop()
	assertUntouched(t, dir, victim)
}

// A target that is a symlink when the agent starts is refused; the
// directory it points to is left alone.
func TestAgentTargetSymlinkRefused(t *testing.T) {
	requireRoot(t)
	dir, victim, home := raceDir(t)
	target := filepath.Join(home, "secrets")
	asAttacker(t, "ln -s "+victim+" "+target)
	classFile := filepath.Join(dir, "class.yaml")
	if err := os.WriteFile(classFile, []byte(testClass), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), Config{
		ClassFile: classFile, Target: target,
		Providers: func(string) (provider.Provider, error) { return fake.New(fake.Options{}), nil },
	})
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("want a symlink refused, got %v", err)
	}
	assertUntouched(t, dir, victim)
}

// secretfs run removes the target directory it made in the parent it made
// it in: the command (the attacker) swaps that parent for a symlink to a
// directory where root has an empty directory of the same name, which
// stays.
func TestRunTargetCleanupNeverFollowsASwappedParent(t *testing.T) {
	e := newRunEnv(t, "none", `mv "$APP" "$APP.old" && ln -s "$VICTIM_PARENT" "$APP"`)
	home := filepath.Join(e.dir, "home")
	victimParent := filepath.Join(e.dir, "rootdir")
	for _, d := range []string{home, filepath.Join(victimParent, "secrets")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(home, attacker, attacker); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(home, "app")
	asAttacker(t, "mkdir "+app)
	e.target = filepath.Join(app, "secrets")
	e.hc.Target = e.target
	e.hc.UID, e.hc.GID = attacker, attacker
	t.Setenv("APP", app)
	t.Setenv("VICTIM_PARENT", victimParent)
	e.start()
	if code := e.wait(); code != 0 {
		t.Fatalf("exit code %d; log:\n%s", code, e.log.String())
	}
	if _, err := os.Lstat(filepath.Join(victimParent, "secrets")); err != nil {
		t.Errorf("root's directory was removed: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(app+".old", "secrets")); !os.IsNotExist(err) {
		t.Errorf("the target directory made by secretfs is still there: %v", err)
	}
}
