package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
