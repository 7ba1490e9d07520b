package integration

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Root on the node (the only one who can open the status socket) opens 1000
// connections at once, each sending 1 MiB of one request header and then
// nothing: the driver in the shipped memory limit is not OOM-killed, and
// `secretfs refresh` through the same socket answers once they are closed.
func TestStatusSocketFloodInShippedMemoryLimit(t *testing.T) {
	limit := shippedMemoryLimit(t)
	cg := newMemcg(t, limit)
	dir := t.TempDir()
	classDir := filepath.Join(dir, "classes")
	mkdir(t, classDir)
	writeFile(t, filepath.Join(classDir, "c.yaml"), class("shown", "fake"))
	t.Cleanup(func() { unmountAllUnder(dir) })
	csiSock := filepath.Join(dir, "csi.sock")
	cg.startIn(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "",
		"--backends", "fake")
	node := nodeClient(t, csiSock)
	publish(t, node, dir, "shown")
	sock := filepath.Join(dir, "status.sock")
	waitForSocket(t, sock)

	const conns = 1000
	header := []byte("POST /refresh HTTP/1.1\r\nHost: secretfs\r\nX-Pad: " + strings.Repeat("a", 1<<20-100))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	for range conns {
		wg.Go(func() {
			c, err := net.Dial("unix", sock)
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			_ = c.SetWriteDeadline(time.Now().Add(3 * time.Second))
			_, _ = c.Write(header)
		})
	}
	wg.Wait()
	if k := cg.oomKills(t); k != 0 {
		t.Fatalf("the driver was OOM-killed (%d) by %d connections of 1 MiB headers", k, conns)
	}
	for _, c := range open {
		c.Close()
	}
	cmd := exec.Command(secretfsBin, "refresh", "--socket", sock, "--namespace", "team-a", "--pod", "app", "--timeout", "1m")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "1 volume(s)") {
		t.Errorf("secretfs refresh during the flood: %v\n%s", err, out.String())
	}
	peak := cg.peak(t)
	t.Logf("cgroup peak %d MiB of %d MiB with %d connections of 1 MiB headers", peak>>20, limit>>20, conns)
	if k := cg.oomKills(t); k != 0 || peak >= limit {
		t.Fatalf("OOM kills %d, peak %d of %d", k, peak, limit)
	}
}
