package integration

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const objects = `
      array:
        - |
          objectName: password
          value: s3cr3t
          filePermission: "0400"
        - |
          objectName: blob
          value: AAEC/w==
          objectEncoding: base64
        - |
          objectName: conf
          objectAlias: dir/app.conf
          generate: 40
`

func class(name, providerName string) string {
	return `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: ` + name + `
  namespace: team-a
spec:
  provider: ` + providerName + `
  parameters:
    objects: |` + objects
}

// TestExternalProviderSameFilesAsInProcess runs `secretfs provider --backend
// fake` as an external provider and checks that a class using it over the
// provider protocol mounts exactly the files the in-process fake mounts.
func TestExternalProviderSameFilesAsInProcess(t *testing.T) {
	dir := t.TempDir()
	classDir, providerDir := filepath.Join(dir, "classes"), filepath.Join(dir, "providers")
	for _, d := range []string{classDir, providerDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(classDir, "inproc.yaml"), class("inproc", "fake"))
	writeFile(t, filepath.Join(classDir, "external.yaml"), class("external", "extfake"))

	start(t, "provider", "--backend", "fake", "--endpoint", "unix://"+filepath.Join(providerDir, "extfake.sock"))
	csiSock := filepath.Join(dir, "csi.sock")
	start(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", providerDir, "--health-addr", "", "--metrics-addr", "", "--backends", "azure,kubernetes,fake")
	node := nodeClient(t, csiSock)
	waitForSocket(t, filepath.Join(providerDir, "extfake.sock"))

	inproc := publish(t, node, dir, "inproc")
	external := publish(t, node, dir, "external")
	a, b := readTree(t, inproc), readTree(t, external)
	if len(a) != 3 {
		t.Fatalf("in-process volume has %d files, want 3: %v", len(a), a)
	}
	for name, want := range a {
		if got, ok := b[name]; !ok || got != want {
			t.Errorf("%s: external %q, in-process %q", name, got, want)
		}
	}
	if len(b) != len(a) {
		t.Errorf("external volume has %d files, in-process %d", len(b), len(a))
	}
	for _, target := range []string{inproc, external} {
		unpublish(t, node, target)
	}
}

// TestExternalProviderMissing names the socket it looked for.
func TestExternalProviderMissing(t *testing.T) {
	dir := t.TempDir()
	classDir := filepath.Join(dir, "classes")
	if err := os.Mkdir(classDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(classDir, "c.yaml"), class("gone", "vault"))
	csiSock := filepath.Join(dir, "csi.sock")
	start(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "")
	node := nodeClient(t, csiSock)
	target := filepath.Join(dir, "gone")
	_, err := node.NodePublishVolume(context.Background(), publishRequest("gone", target))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "vault.sock") {
		t.Fatalf("want Unavailable naming vault.sock, got %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target left behind: %v", err)
	}
}

// start runs secretfs with args until the test ends; what it prints so far
// is read through the returned output.
func start(t *testing.T, args ...string) *output {
	t.Helper()
	cmd := exec.Command(secretfsBin, args...)
	out := &output{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("secretfs %s output:\n%s", args[0], out.String())
		}
	})
	return out
}

// output is a process's output, safe to read while the process writes.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func nodeClient(t *testing.T, socket string) csi.NodeClient {
	t.Helper()
	waitForSocket(t, socket)
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csi.NewNodeClient(conn)
}

func waitForSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("socket %s did not appear", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func publishRequest(className, target string) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{
		VolumeId:   "vol-" + className,
		TargetPath: target,
		Readonly:   true,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
		},
		VolumeContext: map[string]string{
			"secretProviderClass":                    className,
			"csi.storage.k8s.io/ephemeral":           "true",
			"csi.storage.k8s.io/pod.name":            "app",
			"csi.storage.k8s.io/pod.namespace":       "team-a",
			"csi.storage.k8s.io/pod.uid":             "0b7d9a4e-3f1c-4c2e-8d6a-5e4f3a2b1c0d",
			"csi.storage.k8s.io/serviceAccount.name": "app",
		},
	}
}

func publish(t *testing.T, node csi.NodeClient, dir, className string) string {
	t.Helper()
	target := filepath.Join(dir, className)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := node.NodePublishVolume(ctx, publishRequest(className, target)); err != nil {
		t.Fatalf("publish %s: %v", className, err)
	}
	return target
}

func unpublish(t *testing.T, node csi.NodeClient, target string) {
	t.Helper()
	if _, err := node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-" + filepath.Base(target), TargetPath: target}); err != nil {
		t.Fatalf("unpublish %s: %v", target, err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target %s still there: %v", target, err)
	}
}

// readTree maps each file a pod sees to "mode content".
func readTree(t *testing.T, target string) map[string]string {
	t.Helper()
	data, err := filepath.EvalSymlinks(filepath.Join(target, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	err = filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(data, path)
		visible := filepath.Join(target, rel)
		fi, err := os.Stat(visible)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(visible)
		if err != nil {
			return err
		}
		files[rel] = fi.Mode().Perm().String() + " " + string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
