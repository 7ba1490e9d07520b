package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
	"github.com/secretfs/secretfs/test/ci"
)

const testClass = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: local
  namespace: team-a
spec:
  provider: fake
  parameters:
    objects: |
      - objectName: token
        value: first
        filePermission: "0400"
      - objectName: conf
        objectAlias: etc/app.conf
        value: "a=1"
`

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		ci.Missing(t, "the agent tests mount tmpfs and must run as root")
	}
}

// TestAgentMountsRefreshesAndUnmounts runs the agent for real: tmpfs, files,
// a rotation picked up by the refresh loop, and a clean unmount on stop.
func TestAgentMountsRefreshesAndUnmounts(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	classFile := filepath.Join(dir, "class.yaml")
	if err := os.WriteFile(classFile, []byte(testClass), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "data")
	if err := os.MkdirAll(filepath.Join(dataDir, "team-a"), 0o700); err != nil {
		t.Fatal(err)
	}
	backend := fake.New(fake.Options{DataDir: dataDir})
	target := filepath.Join(dir, "mnt", "secrets")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mounted := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			ClassFile: classFile,
			Target:    target,
			Interval:  50 * time.Millisecond,
			Providers: func(name string) (provider.Provider, error) {
				if name != "fake" {
					t.Errorf("provider %q asked for", name)
				}
				return backend, nil
			},
			Mounted: func() { close(mounted) },
		})
	}()
	select {
	case <-mounted:
	case err := <-done:
		t.Fatalf("agent stopped before mounting: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not mount")
	}

	if err := tmpfs.Verify(target); err != nil {
		t.Fatalf("target is not a tmpfs: %v", err)
	}
	// Root's alone by default; the class's filePermission still applies.
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("target mode %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	assertFile(t, filepath.Join(target, "token"), "first", 0o400)
	assertFile(t, filepath.Join(target, "etc/app.conf"), "a=1", 0o600)

	// Rotate through the fake's data directory; the refresh loop picks it up.
	tmp := filepath.Join(dataDir, "team-a", ".token")
	if err := os.WriteFile(tmp, []byte("second"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dataDir, "team-a", "token")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		b, _ := os.ReadFile(filepath.Join(target, "token"))
		return string(b) == "second"
	})

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent stop: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target still exists after stop: %v", err)
	}
	mounts, err := tmpfs.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if strings.HasPrefix(m, dir) {
			t.Fatalf("still mounted after stop: %s", m)
		}
	}
}

func TestAgentFirstMountFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	classFile := filepath.Join(dir, "class.yaml")
	broken := strings.Replace(testClass, "objectName: token", "objectName: ../token", 1)
	if err := os.WriteFile(classFile, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "secrets")
	err := Run(context.Background(), Config{
		ClassFile: classFile,
		Target:    target,
		Providers: func(string) (provider.Provider, error) { return fake.New(fake.Options{}), nil },
	})
	if err == nil || !strings.Contains(err.Error(), "objectName") {
		t.Fatalf("want an error naming objectName, got %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}
}

func TestPickClass(t *testing.T) {
	dir := t.TempDir()
	two := filepath.Join(dir, "two.yaml")
	second := strings.Replace(testClass, "name: local", "name: other", 1)
	if err := os.WriteFile(two, []byte(testClass+"---\n"+second), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pickClass(two, ""); err == nil || !strings.Contains(err.Error(), "pick one by name") {
		t.Fatalf("two classes without a name: %v", err)
	}
	if c, err := pickClass(two, "other"); err != nil || c.Name != "other" || c.Namespace != "team-a" {
		t.Fatalf("pick other: %v %+v", err, c)
	}
	if _, err := pickClass(two, "missing"); err == nil || !strings.Contains(err.Error(), `"missing"`) {
		t.Fatalf("missing name: %v", err)
	}
	if _, err := pickClass(filepath.Join(dir, "nope.yaml"), ""); err == nil {
		t.Fatal("missing file accepted")
	}
}

func assertFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != content || fi.Mode().Perm() != mode {
		t.Fatalf("%s: got %q mode %v, want %q mode %v", path, b, fi.Mode().Perm(), content, mode)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The files of `secretfs mount` are the owner's alone: another local user
// can read none of them, the owner all that the class lets it.
func TestAgentFilesAreTheOwnersAlone(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name  string
		owner *driver.Owner
		who   uint32 // the owner's uid
	}{
		{"default root", nil, 0},
		{"uid 65534", &driver.Owner{UID: 65534, GID: 65534, RootMode: 0o700, FileMode: 0o600}, 65534},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "secretfs-agent-test-") // reachable by all users
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			classFile := filepath.Join(dir, "class.yaml")
			if err := os.WriteFile(classFile, []byte(testClass), 0o600); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(dir, "secrets")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			mounted := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, Config{
					ClassFile: classFile, Target: target, Owner: tc.owner,
					Providers: func(string) (provider.Provider, error) { return fake.New(fake.Options{}), nil },
					Mounted:   func() { close(mounted) },
				})
			}()
			select {
			case <-mounted:
			case err := <-done:
				t.Fatalf("agent stopped: %v", err)
			}
			for _, f := range []string{"etc/app.conf", "token"} {
				if out, err := catAs(65533, filepath.Join(target, f)); err == nil {
					t.Errorf("another user read %s: %q", f, out)
				}
			}
			if tc.who != 0 {
				if out, err := catAs(tc.who, filepath.Join(target, "etc/app.conf")); err != nil || out != "a=1" {
					t.Errorf("the owner cannot read its file: %q %v", out, err)
				}
				// filePermission 0400 still applies, to the owner's file.
				if out, err := catAs(tc.who, filepath.Join(target, "token")); err != nil || out != "first" {
					t.Errorf("the owner cannot read the 0400 token: %q %v", out, err)
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// catAs reads a file as the user uid (group uid, no supplementary groups).
func catAs(uid uint32, path string) (string, error) {
	cmd := exec.Command("cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	out, err := cmd.Output()
	return string(out), err
}
