// Command demo shows secretfs end to end on this machine: it starts the
// driver with the fake backend, publishes a volume exactly as kubelet does
// (same volume context keys, over the CSI socket), shows the files and the
// tmpfs, rotates a value, and unpublishes. It needs root (it mounts tmpfs).
package main

import (
	"bytes"
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

//go:embed class.yaml
var demoClass []byte

const rotation = time.Second

func main() {
	bin := flag.String("secretfs", "bin/secretfs", "path of the secretfs binary")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(bin string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the driver mounts a tmpfs")
	}
	work, err := os.MkdirTemp("", "secretfs-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	classDir, dataDir := filepath.Join(work, "classes"), filepath.Join(work, "fake-data")
	for _, d := range []string{classDir, filepath.Join(dataDir, "default")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(classDir, "demo.yaml"), demoClass, 0o600); err != nil {
		return err
	}
	socket := filepath.Join(work, "csi.sock")

	step("Start the driver with the fake backend")
	args := []string{"driver", "--endpoint", "unix://" + socket, "--node-id", "demo-node",
		"--class-dir", classDir, "--fake-data-dir", dataDir, "--backends", "fake", "--rotation-interval", rotation.String(),
		"--kubelet-dir", filepath.Join(work, "kubelet"), "--health-addr", "", "--metrics-addr", ""}
	fmt.Printf("  %s %s\n", bin, strings.Join(args, " "))
	var driverLog bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &driverLog, &driverLog
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := waitReady(ctx, csi.NewIdentityClient(conn)); err != nil {
		return fmt.Errorf("%v\ndriver log:\n%s", err, driverLog.String())
	}
	node := csi.NewNodeClient(conn)

	podUID := "6f1c3a52-8d0e-4d5e-9a51-0c2b7e0f4d11"
	target := filepath.Join(work, "kubelet/pods", podUID, "volumes/kubernetes.io~csi/secrets/mount")
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	req := &csi.NodePublishVolumeRequest{
		VolumeId:         "csi-" + podUID[:8] + "-demo",
		TargetPath:       target,
		Readonly:         true,
		VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}},
		VolumeContext: map[string]string{
			"secretProviderClass":                    "demo",
			"csi.storage.k8s.io/ephemeral":           "true",
			"csi.storage.k8s.io/pod.name":            "demo-app",
			"csi.storage.k8s.io/pod.namespace":       "default",
			"csi.storage.k8s.io/pod.uid":             podUID,
			"csi.storage.k8s.io/serviceAccount.name": "default",
		},
	}

	step("Publish the volume as kubelet does (NodePublishVolume)")
	start := time.Now()
	if _, err := node.NodePublishVolume(ctx, req); err != nil {
		return err
	}
	fmt.Printf("  published in %v at %s\n", time.Since(start).Round(time.Microsecond), shortPath(work, target))
	if err := showFiles(target); err != nil {
		return err
	}
	if err := showMount(target); err != nil {
		return err
	}

	step("Rotate db-password in the backend, then republish (kubelet does this every sync period)")
	if err := os.WriteFile(filepath.Join(dataDir, "default", "db-password"), []byte("tr0ub4dor&3"), 0o600); err != nil {
		return err
	}
	time.Sleep(rotation + 100*time.Millisecond)
	if _, err := node.NodePublishVolume(ctx, req); err != nil {
		return err
	}
	content, err := os.ReadFile(filepath.Join(target, "db-password"))
	if err != nil {
		return err
	}
	fmt.Printf("  db-password now reads %q (swapped atomically through ..data)\n", content)

	step("Unpublish (NodeUnpublishVolume, as when the pod is deleted)")
	if _, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: target}); err != nil {
		return err
	}
	_, statErr := os.Stat(target)
	mounted, err := mountLine(target)
	if err != nil {
		return err
	}
	fmt.Printf("  target exists: %v; mounted: %v\n", !os.IsNotExist(statErr), mounted != "")
	if !os.IsNotExist(statErr) || mounted != "" {
		return fmt.Errorf("something was left behind at %s", target)
	}
	fmt.Println("\nDone: nothing of the secret is left on this machine.")
	return nil
}

func step(s string) { fmt.Printf("\n== %s\n", s) }

func waitReady(ctx context.Context, id csi.IdentityClient) error {
	for {
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && resp.GetReady().GetValue() {
			info, err := id.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
			if err != nil {
				return err
			}
			fmt.Printf("  ready: %s %s\n", info.GetName(), info.GetVendorVersion())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("driver not ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// showFiles lists what a pod sees. The visible names are symlinks into
// ..data, the directory the atomic writer swaps, so walk that.
func showFiles(target string) error {
	fmt.Println("  files as the pod sees them:")
	data, err := filepath.EvalSymlinks(filepath.Join(target, "..data"))
	if err != nil {
		return err
	}
	return filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		content, err := os.ReadFile(filepath.Join(target, mustRel(data, path)))
		if err != nil {
			return err
		}
		fmt.Printf("    %v %4d  %-14s %q\n", fi.Mode().Perm(), fi.Size(), mustRel(data, path), preview(content))
		return nil
	})
}

func mustRel(base, p string) string {
	rel, err := filepath.Rel(base, p)
	if err != nil {
		return p
	}
	return rel
}

func preview(b []byte) string {
	s := string(b)
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}

func showMount(target string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		return err
	}
	line, err := mountLine(target)
	if err != nil {
		return err
	}
	fmt.Printf("  statfs type 0x%x (tmpfs is 0x%x): tmpfs=%v\n", st.Type, unix.TMPFS_MAGIC, st.Type == unix.TMPFS_MAGIC)
	fmt.Printf("  mountinfo: %s\n", line)
	return nil
}

// mountLine returns the mount options and source of target from mountinfo.
func mountLine(target string) (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 9 && f[4] == target {
			sep := 6
			for sep < len(f) && f[sep] != "-" {
				sep++
			}
			if sep+3 < len(f) {
				return fmt.Sprintf("%s %s %s,%s", f[sep+1], f[sep+2], f[5], f[sep+3]), nil
			}
		}
	}
	return "", nil
}

func shortPath(base, p string) string {
	rel, err := filepath.Rel(base, p)
	if err != nil {
		return p
	}
	return "$WORK/" + rel
}
