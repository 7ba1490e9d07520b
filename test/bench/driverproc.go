package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/secretfs/secretfs/driver/tmpfs"
)

// driverProc is a running `secretfs driver`.
type driverProc struct {
	cmd     *exec.Cmd
	sock    string // CSI socket
	pprof   string // pprof socket, when profiling
	metrics string // base URL
	log     string
	exited  chan error
}

func startDriver(ctx context.Context, cfg config, bin, dir, kubeletDir string, mode runMode) (*driverProc, error) {
	p := &driverProc{
		sock:   filepath.Join(dir, "csi.sock"),
		log:    filepath.Join(dir, fmt.Sprintf("driver-cache-%v-sync-%v-%s.log", mode.cache, mode.sync, mode.pattern)),
		exited: make(chan error, 1),
	}
	os.Remove(p.sock)
	logFile, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	args := []string{"driver",
		"--endpoint", "unix://" + p.sock,
		"--node-id", "bench-node",
		"--class-dir", filepath.Join(dir, "classes"),
		"--fake-data-dir", filepath.Join(dir, "fake-data"),
		"--backends", "fake",
		"--provider-dir", filepath.Join(dir, "providers"),
		"--kubelet-dir", kubeletDir,
		"--metrics-addr", "127.0.0.1:0", // the port the driver binds is read from its log
		"--health-addr", "",
		"--rotation-interval", cfg.rotation.String(),
		"--cache=" + strconv.FormatBool(mode.cache),
		"--log-format", "json",
	}
	if mode.sync {
		args = append(args, "--kubeconfig", cfg.kubeconfig, "--sync-secrets", "--events=false")
	}
	if cfg.cpuProfile != "" || cfg.heapProfile != "" {
		p.pprof = filepath.Join(dir, "pprof.sock")
		args = append(args, "--pprof-addr", "unix://"+p.pprof)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	go func() { p.exited <- p.cmd.Wait(); logFile.Close() }()
	conn, err := grpc.NewClient("unix://"+p.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.stop()
		return nil, err
	}
	defer conn.Close()
	ids := csi.NewIdentityClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, c := context.WithTimeout(ctx, time.Second)
		resp, err := ids.Probe(pctx, &csi.ProbeRequest{})
		c()
		if addr := servedAddr(p.log); err == nil && resp.GetReady().GetValue() && addr != "" {
			p.metrics = "http://" + addr + "/metrics"
			return p, nil
		}
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("driver exited at start (%v); log: %s", err, tail(p.log))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("driver not ready: %v; log: %s", err, tail(p.log))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the driver with SIGTERM (SIGKILL after 10 s).
func (p *driverProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// cpuProfile fetches a CPU profile of seconds from the driver's pprof
// socket into file; it returns when the profile is written.
func (p *driverProc) cpuProfile(ctx context.Context, seconds int, file string) error {
	return p.profile(ctx, fmt.Sprintf("profile?seconds=%d", seconds), file)
}

// heapProfile writes the driver's live heap (after a GC) into file.
func (p *driverProc) heapProfile(ctx context.Context, file string) error {
	return p.profile(ctx, "heap?gc=1", file)
}

// profile fetches /debug/pprof/<query> from the driver's pprof socket into
// file.
func (p *driverProc) profile(ctx context.Context, query, file string) error {
	// One connection per profile, closed after it: a kept-alive connection
	// of a client used once would count as the driver's goroutine and fd.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", p.pprof)
	}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/debug/pprof/"+query, nil)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("pprof %s: %w", query, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof %s: %s", query, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// metricValues are the counters the table needs from the driver's /metrics.
type metricValues struct {
	backend, throttled, refreshFailed, syncRequests int64
}

// scrape reads the driver's /metrics (Prometheus text format).
func scrape(ctx context.Context, url string) (metricValues, error) {
	var m metricValues
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, fmt.Errorf("scraping metrics: %w", err)
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			continue
		}
		labels, value, _ := strings.Cut(rest, "} ")
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch {
		case name == "secretfs_provider_fetches_total" && strings.Contains(labels, `provider="fake"`):
			m.backend += int64(v)
			if strings.Contains(labels, `code="Unavailable"`) {
				m.throttled += int64(v) // the only Unavailable the fake gives here
			}
		case name == "secretfs_secret_sync_requests_total":
			m.syncRequests += int64(v)
		case name == "secretfs_volume_refreshes_total" && strings.Contains(labels, `result="failed"`):
			m.refreshFailed += int64(v)
		}
	}
	return m, s.Err()
}

// memory is the resident memory of a process in MiB: all of it (VmRSS),
// the anonymous part (RssAnon: heap, stacks) and the file-backed part
// (RssFile + RssShmem: the binary's pages, shared with the page cache).
type memory struct{ rss, anon, file float64 }

func memoryOf(pid int) (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	kb := func(field string) (float64, error) {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, field+":"); ok {
				v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				return v / 1024, err
			}
		}
		return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
	}
	var m memory
	var fileRSS, shmem float64
	for _, f := range []struct {
		name string
		v    *float64
	}{{"VmRSS", &m.rss}, {"RssAnon", &m.anon}, {"RssFile", &fileRSS}, {"RssShmem", &shmem}} {
		if *f.v, err = kb(f.name); err != nil {
			return memory{}, err
		}
	}
	m.file = fileRSS + shmem
	return m, nil
}

// cpuTime is the user + system CPU time pid (all its threads) has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15, in clock ticks (USER_HZ, 100 on Linux).
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// runtimeSettle gives the driver a moment after the burst, as a node
// would have between pod starts, before RSS is read.
func runtimeSettle() { time.Sleep(200 * time.Millisecond) }

func mountsUnder(dir string) int {
	all, err := tmpfs.List()
	if err != nil {
		return -1
	}
	n := 0
	for _, m := range all {
		if strings.HasPrefix(m, dir+"/") {
			n++
		}
	}
	return n
}

// unmountUnder detaches every secretfs mount below dir.
func unmountUnder(dir string) {
	all, _ := tmpfs.List()
	for _, m := range all {
		if strings.HasPrefix(m, dir+"/") {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	}
}

// servedAddr is the address the driver's HTTP server (metrics only: health
// is off) listens on, from its JSON log; empty until it is logged.
func servedAddr(log string) string {
	b, _ := os.ReadFile(log)
	for _, line := range strings.Split(string(b), "\n") {
		var rec struct{ Msg, Addr string }
		// pprof on a unix socket is logged the same way, with a path.
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving HTTP" && !strings.HasPrefix(rec.Addr, "/") {
			return rec.Addr
		}
	}
	return ""
}

// tail returns the last lines of a log file.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}
