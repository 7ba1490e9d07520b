package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	mount "k8s.io/mount-utils"
)

// volumeName is the pod spec's name of the CSI inline volume.
const volumeName = "secrets"

// volume is one pod's inline volume as kubelet sees it.
type volume struct {
	podUID string
	dir    string // <root>/pods/<uid>/volumes/kubernetes.io~csi/<name>
	req    *csi.NodePublishVolumeRequest
}

// newVolume is pod i's inline volume: kubelet's volume handle
// (csi-<sha256(podUID + volume name)>, pkg/volume/csi makeVolumeHandle), its
// target layout, the pod's identity (all pods of one Deployment share the
// service account) and a per-pod token.
func newVolume(kubeletDir string, i int) *volume {
	uid := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	dir := filepath.Join(kubeletDir, "pods", uid, "volumes", "kubernetes.io~csi", volumeName)
	return &volume{podUID: uid, dir: dir, req: &csi.NodePublishVolumeRequest{
		VolumeId:   fmt.Sprintf("csi-%x", sha256.Sum256([]byte(uid+volumeName))),
		TargetPath: filepath.Join(dir, "mount"),
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly: true,
		VolumeContext: map[string]string{
			"secretProviderClass":                      className,
			"csi.storage.k8s.io/ephemeral":             "true",
			"csi.storage.k8s.io/pod.name":              fmt.Sprintf("web-%d", i),
			"csi.storage.k8s.io/pod.namespace":         namespace,
			"csi.storage.k8s.io/pod.uid":               uid,
			"csi.storage.k8s.io/serviceAccount.name":   "web",
			"csi.storage.k8s.io/serviceAccount.tokens": fmt.Sprintf(`{"api":{"token":"bench-token-%d","expirationTimestamp":%q}}`, i, time.Now().Add(time.Hour).UTC().Format(time.RFC3339)),
		},
	}}
}

// csiCaller makes the CSI calls of one pattern: what kubelet's
// operation executor does for a volume's SetUp and TearDown.
type csiCaller interface {
	// setUp publishes v (first publish or republish).
	setUp(ctx context.Context, v *volume) error
	// tearDown unpublishes v.
	tearDown(ctx context.Context, v *volume) error
	close()
	// rpcsPerSetUp and rpcsPerTearDown are the CSI calls each makes.
	rpcsPerSetUp() int
	rpcsPerTearDown() int
}

// kubeletCaller is kubelet's pattern (pkg/volume/csi): every CSI call gets a
// new gRPC connection that is closed afterwards (csi_client.go builds a
// client and a closer per call), and SetUp asks NodeGetCapabilities twice
// before NodePublishVolume (VOLUME_MOUNT_GROUP, then
// SINGLE_NODE_MULTI_WRITER). Around the calls it does kubelet's file work:
// the volume directory and vol_data.json before SetUp; after TearDown the
// mount point check, and removal of the mount dir, vol_data.json and the
// volume directory (csi_mounter.go removeMountDir).
type kubeletCaller struct {
	sock    string
	mounter mount.Interface
}

func newKubeletCaller(sock string) *kubeletCaller {
	return &kubeletCaller{sock: sock, mounter: mount.New("")}
}

func (k *kubeletCaller) rpcsPerSetUp() int    { return 3 }
func (k *kubeletCaller) rpcsPerTearDown() int { return 1 }
func (k *kubeletCaller) close()               {}

// dial is kubelet's newGrpcConn: the passthrough resolver and a plain
// unix dialer; the connection is made by the first call on it.
func (k *kubeletCaller) dial() (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+k.sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
}

func (k *kubeletCaller) capabilities(ctx context.Context, want csi.NodeServiceCapability_RPC_Type) (bool, error) {
	conn, err := k.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	resp, err := csi.NewNodeClient(conn).NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		return false, err
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc().GetType() == want {
			return true, nil
		}
	}
	return false, nil
}

// volData is what kubelet stores next to the mount dir.
type volData struct {
	SpecVolID           string `json:"specVolumeID"`
	VolHandle           string `json:"volumeHandle"`
	DriverName          string `json:"driverName"`
	NodeName            string `json:"nodeName"`
	VolumeLifecycleMode string `json:"volumeLifecycleMode"`
}

func (k *kubeletCaller) setUp(ctx context.Context, v *volume) error {
	if err := os.MkdirAll(v.dir, 0o750); err != nil {
		return err
	}
	b, _ := json.Marshal(volData{SpecVolID: volumeName, VolHandle: v.req.VolumeId, DriverName: "csi.secretfs.dev", NodeName: "bench-node", VolumeLifecycleMode: "Ephemeral"})
	if err := os.WriteFile(filepath.Join(v.dir, "vol_data.json"), b, 0o644); err != nil {
		return err
	}
	if _, err := k.capabilities(ctx, csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP); err != nil {
		return err
	}
	if _, err := k.capabilities(ctx, csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER); err != nil {
		return err
	}
	conn, err := k.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = csi.NewNodeClient(conn).NodePublishVolume(ctx, v.req)
	return err
}

func (k *kubeletCaller) tearDown(ctx context.Context, v *volume) error {
	conn, err := k.dial()
	if err != nil {
		return err
	}
	_, err = csi.NewNodeClient(conn).NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.req.VolumeId, TargetPath: v.req.TargetPath})
	conn.Close()
	if err != nil {
		return err
	}
	// removeMountDir: a mount point left would be a failed TearDown.
	mnt, err := k.mounter.IsMountPoint(v.req.TargetPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if mnt {
		return fmt.Errorf("%s is still mounted after NodeUnpublishVolume", v.req.TargetPath)
	}
	if err := os.Remove(v.req.TargetPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Remove(filepath.Join(v.dir, "vol_data.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return os.Remove(v.dir)
}

// sharedCaller sends every call over one connection and makes no probes:
// the cheapest a caller can be, for comparison.
type sharedCaller struct {
	conn *grpc.ClientConn
	node csi.NodeClient
}

func newSharedCaller(sock string) (*sharedCaller, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &sharedCaller{conn: conn, node: csi.NewNodeClient(conn)}, nil
}

func (s *sharedCaller) rpcsPerSetUp() int    { return 1 }
func (s *sharedCaller) rpcsPerTearDown() int { return 1 }
func (s *sharedCaller) close()               { s.conn.Close() }

func (s *sharedCaller) setUp(ctx context.Context, v *volume) error {
	if err := os.MkdirAll(v.dir, 0o750); err != nil {
		return err
	}
	_, err := s.node.NodePublishVolume(ctx, v.req)
	return err
}

func (s *sharedCaller) tearDown(ctx context.Context, v *volume) error {
	_, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.req.VolumeId, TargetPath: v.req.TargetPath})
	return err
}
