package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
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
		if os.Getenv("CI") != "" {
			t.Fatal("the agent tests mount tmpfs and must run as root")
		}
		t.Skip("needs root to mount tmpfs")
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
	assertFile(t, filepath.Join(target, "token"), "first", 0o400)
	assertFile(t, filepath.Join(target, "etc/app.conf"), "a=1", 0o644)

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
