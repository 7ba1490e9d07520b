package integration

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProviderHealthInHealthz runs the driver and an external provider as
// processes: /healthz lists the provider as ok, then, once the provider is
// stopped, as unhealthy, while the driver stays ready (200).
func TestProviderHealthInHealthz(t *testing.T) {
	dir := t.TempDir()
	providerDir, classDir := filepath.Join(dir, "providers"), filepath.Join(dir, "classes")
	for _, d := range []string{providerDir, classDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(providerDir, "extfake.sock")
	prov := exec.Command(secretfsBin, "provider", "--backend", "fake", "--endpoint", "unix://"+sock)
	if err := prov.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prov.Process.Kill(); prov.Wait() })
	waitForSocket(t, sock)

	// The driver binds a free port itself and logs it: no port is picked,
	// closed and handed over for another process to take in between.
	out := start(t, "driver", "--endpoint", "unix://"+filepath.Join(dir, "csi.sock"), "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", providerDir, "--health-addr", "127.0.0.1:0", "--metrics-addr", "",
		"--provider-health-interval", "100ms")
	addr := servedAddr(t, out)

	healthz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitBody := func(want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body := healthz()
			if code == http.StatusOK && strings.HasPrefix(body, "ok\n") && strings.Contains(body, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/healthz never said %q with 200; last %d %q", want, code, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitBody("provider extfake: ok (secretfs ")
	prov.Process.Signal(os.Interrupt)
	prov.Wait()
	waitBody("provider extfake: unhealthy since ")
}

// servedAddr waits for the driver to log the address its HTTP server
// listens on (text log: msg="serving HTTP" addr=HOST:PORT).
func servedAddr(t *testing.T, out *output) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, line := range strings.Split(out.String(), "\n") {
			if !strings.Contains(line, `msg="serving HTTP"`) {
				continue
			}
			for _, field := range strings.Fields(line) {
				if addr, ok := strings.CutPrefix(field, "addr="); ok {
					return addr
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver did not log its HTTP address; output:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
