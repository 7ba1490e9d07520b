package integration

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestMaxProcs: the driver runs its Go code on one thread unless told
// otherwise: the GOMAXPROCS environment variable wins over the default,
// -max-procs over both, and -max-procs 0 leaves Go's default. /metrics
// shows the value in force (go_sched_gomaxprocs_threads) and the log says
// where it came from.
func TestMaxProcs(t *testing.T) {
	goDefault := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("the test's own GOMAXPROCS environment variable would reach the driver")
	}
	for _, tc := range []struct {
		name, env string
		args      []string
		want      int
		log       string
	}{
		{"default", "", nil, 1, "source=\"-max-procs 1\""},
		{"environment", "3", nil, 3, "source=\"GOMAXPROCS environment variable\""},
		{"flag over environment", "3", []string{"--max-procs", "2"}, 2, "-max-procs overrides the GOMAXPROCS environment variable"},
		{"Go's default", "", []string{"--max-procs", "0"}, goDefault, "source=\"Go's default (-max-procs 0)\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("GOMAXPROCS", tc.env)
			}
			dir := t.TempDir()
			args := append([]string{"driver", "--endpoint", "unix://" + filepath.Join(dir, "csi.sock"), "--node-id", "n1",
				"--class-dir", dir, "--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"),
				"--health-addr", "", "--metrics-addr", "127.0.0.1:0", "--status-socket", "off"}, tc.args...)
			out := start(t, args...)
			addr := servedAddr(t, out)
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			want := "\ngo_sched_gomaxprocs_threads " + strconv.Itoa(tc.want) + "\n"
			if !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %q", strings.TrimSpace(want))
			}
			if !strings.Contains(out.String(), tc.log) {
				t.Errorf("log lacks %q:\n%s", tc.log, out)
			}
		})
	}
}
