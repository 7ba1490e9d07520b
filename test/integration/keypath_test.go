package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// 64 publishes at once of a class of three 1 MiB values read by key paths
// (the fake backend's data files, as a Secret of 1 MiB would be): the
// backend's answers are charged to the node's bound of answers in flight
// before they are read, so the publishes past it fail Unavailable (kubelet
// retries) and the driver stays within its limit. Before, the fake backend
// charged only the volume's limits, and 64 such publishes OOM-killed the
// driver within 3 s.
func TestKeyPathAnswersInShippedMemoryLimit(t *testing.T) {
	cg := newMemcg(t, shippedMemoryLimit(t))
	dir := t.TempDir()
	classDir, data := filepath.Join(dir, "classes"), filepath.Join(dir, "data")
	mkdir(t, classDir)
	mkdir(t, filepath.Join(data, "team-a"))
	mkdir(t, filepath.Join(dir, "t"))
	t.Cleanup(func() { unmountAllUnder(dir) })
	var o strings.Builder
	for i := range 3 {
		writeFile(t, filepath.Join(data, "team-a", fmt.Sprint("k", i)), `{"a":"`+strings.Repeat("x", 1<<20-16)+`"}`)
		fmt.Fprintf(&o, "      - {objectName: k%d, keyPath: a}\n", i)
	}
	writeFile(t, filepath.Join(classDir, "a.yaml"), tenantClass("attack", o.String(), "    secretfs.dev/nodeCache: \"false\"\n"))
	sock := filepath.Join(dir, "csi.sock")
	cg.startIn(t, "driver", "--endpoint", "unix://"+sock, "--node-id", "n1", "--class-dir", classDir, "--kubelet-dir", dir,
		"--provider-dir", filepath.Join(dir, "p"), "--status-socket", "off", "--backends", "fake", "--max-procs", "1", "--fake-data-dir", data,
		"--health-addr", "", "--metrics-addr", "")
	node := nodeClient(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	for a := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				r := publishRequest("attack", filepath.Join(dir, "t", fmt.Sprint(a, "-", i)))
				r.VolumeId = fmt.Sprint(a, "-", i)
				_, err := node.NodePublishVolume(ctx, r)
				mu.Lock()
				codesSeen[status.Code(err)]++
				mu.Unlock()
				if err == nil {
					node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: r.VolumeId, TargetPath: r.TargetPath})
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("codes %v; peak %d MiB", codesSeen, cg.peak(t)>>20)
	if k := cg.oomKills(t); k > 0 {
		t.Fatalf("driver OOM-killed %d times by one tenant's key-path volumes", k)
	}
	if codesSeen[codes.OK] == 0 || codesSeen[codes.Unavailable] == 0 {
		t.Errorf("codes %v: want publishes through and others refused Unavailable by the bound of answers in flight", codesSeen)
	}
}
