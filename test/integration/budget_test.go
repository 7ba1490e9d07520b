package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A class of 1,024 fake objects of 64 KiB each (64 MiB from ~40 KB of YAML)
// used to drive the driver past its memory limit: it was OOM-killed. Under
// the DaemonSet's memory limit, in a real memory cgroup, the publish now
// fails ResourceExhausted while the backend generates, the driver lives on
// and mounts the next volume, and the cgroup never came near its limit.
func TestClassOverTheByteBudgetInShippedMemoryLimit(t *testing.T) {
	limit := shippedMemoryLimit(t)
	cg := newMemcg(t, limit)
	dir := t.TempDir()
	classDir := filepath.Join(dir, "classes")
	mkdir(t, classDir)
	writeFile(t, filepath.Join(classDir, "big.yaml"), fakeClass("big", 1024, 65536))
	writeFile(t, filepath.Join(classDir, "small.yaml"), fakeClass("small", 2, 100))
	csiSock := filepath.Join(dir, "csi.sock")
	drv := cg.startIn(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "",
		"--backends", "fake")
	node := nodeClient(t, csiSock)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 3 { // again and again: nothing accumulates
		_, err := node.NodePublishVolume(ctx, publishRequest("big", filepath.Join(dir, "big")))
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--tmpfs-size") {
			t.Fatalf("publish %d of the big class: want ResourceExhausted naming --tmpfs-size, got %v", i, err)
		}
	}
	if !alive(drv) || cg.oomKills(t) != 0 {
		t.Fatalf("driver alive %v, OOM kills %d", alive(drv), cg.oomKills(t))
	}
	target := publish(t, node, dir, "small")
	if files := readTree(t, target); len(files) != 2 {
		t.Fatalf("small class: %d files", len(files))
	}
	unpublish(t, node, target)
	peak := cg.peak(t)
	t.Logf("cgroup peak %d bytes of a %d-byte limit", peak, limit)
	if peak > limit*3/4 {
		t.Fatalf("cgroup peak %d bytes: too close to the %d-byte limit", peak, limit)
	}
}

// Volume pages are charged to the driver's memory cgroup. Under the
// DaemonSet's memory limit, in a real memory cgroup, the driver with its
// default node budget (derived from that limit) publishes full volumes until
// the budget is spent, refuses the next ones with ResourceExhausted naming
// --node-budget, stays alive without an OOM kill, and takes volumes again
// once one is unpublished.
func TestNodeBudgetInShippedMemoryLimit(t *testing.T) {
	limit := shippedMemoryLimit(t)
	cg := newMemcg(t, limit)
	dir := t.TempDir()
	classDir := filepath.Join(dir, "classes")
	mkdir(t, classDir)
	t.Cleanup(func() { unmountAllUnder(dir) })
	// 127 objects of 64 KiB: a full 8 MiB volume.
	writeFile(t, filepath.Join(classDir, "full.yaml"), fakeClass("full", 127, 65536))
	csiSock := filepath.Join(dir, "csi.sock")
	drv := cg.startIn(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "",
		"--backends", "fake")
	node := nodeClient(t, csiSock)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	published := 0
	var refused error
	for i := range 12 { // the budget allows fewer; without it ~10 OOM-killed the driver
		req := publishRequest("full", filepath.Join(dir, fmt.Sprint("v", i)))
		req.VolumeId = fmt.Sprint("vol-", i)
		_, err := node.NodePublishVolume(ctx, req)
		if err == nil {
			if refused != nil {
				t.Fatalf("volume %d published after volume %d was refused", i, published)
			}
			published++
			continue
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--node-budget") {
			t.Fatalf("volume %d: want ResourceExhausted naming --node-budget, got %v", i, err)
		}
		refused = err
	}
	t.Logf("%d full volumes published under a %d-byte limit; then: %v", published, limit, refused)
	if published < 2 || refused == nil {
		t.Fatalf("published %d volumes, refused: %v", published, refused)
	}
	if !alive(drv) || cg.oomKills(t) != 0 {
		t.Fatalf("driver alive %v, OOM kills %d", alive(drv), cg.oomKills(t))
	}
	if peak := cg.peak(t); peak >= limit {
		t.Fatalf("cgroup peak %d reached the limit %d", peak, limit)
	}
	// Room again after an unpublish.
	unpublishID(t, node, "vol-0", filepath.Join(dir, "v0"))
	req := publishRequest("full", filepath.Join(dir, "again"))
	req.VolumeId = "vol-again"
	if _, err := node.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("after an unpublish: %v", err)
	}
	if !alive(drv) || cg.oomKills(t) != 0 {
		t.Fatalf("driver alive %v, OOM kills %d", alive(drv), cg.oomKills(t))
	}
}

func unpublishID(t *testing.T, node csi.NodeClient, id, target string) {
	t.Helper()
	if _, err := node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("unpublish %s: %v", id, err)
	}
}
