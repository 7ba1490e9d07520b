// Command bench is the load harness of the secretfs CSI driver. It drives the
// real `secretfs driver` binary the way kubelet does, over the real unix
// socket, with real tmpfs mounts: it builds the binary, starts it with a
// class directory and the fake backend (injected latency and a Key Vault-like
// request limit), publishes N volumes of an M-object class at concurrency C,
// republishes them all after the rotation interval, unpublishes them, and
// prints one table row per driver setting (node cache on and off):
//
//	publish p50/p99 and publishes/s, backend requests (from the driver's
//	/metrics), 429s the backend answered, driver RSS with every volume
//	mounted, and the same for the rotation pass.
//
// It stops by itself (-timeout), and removes every mount and file it made,
// also on failure or Ctrl-C. It must run as root (tmpfs mounts):
//
//	go run ./test/bench                        # CI size: 200 x 5, C=50
//	go run ./test/bench -volumes 1000 -concurrency 200 -latency 0s
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/tmpfs"
)

type config struct {
	volumes     int
	objects     int
	objectBytes int
	concurrency int
	latency     time.Duration
	rateLimit   float64
	rotation    time.Duration
	modes       []bool // cache on/off
	syncModes   []bool // --sync-secrets off/on
	kubeconfig  string // of the API server the sync writes to (sync.go)
	binary      string
	timeout     time.Duration
	keepLogs    bool
}

func main() {
	var cfg config
	var modes string
	flag.IntVar(&cfg.volumes, "volumes", 200, "volumes (pods) to publish")
	flag.IntVar(&cfg.objects, "objects", 5, "objects (files) per volume")
	flag.IntVar(&cfg.objectBytes, "object-bytes", 64, "bytes per object")
	flag.IntVar(&cfg.concurrency, "concurrency", 50, "concurrent CSI calls, as kubelet's pod workers")
	flag.DurationVar(&cfg.latency, "latency", 20*time.Millisecond, "fake backend latency per request (class parameter latency)")
	flag.Float64Var(&cfg.rateLimit, "rate-limit", 80, "fake backend requests per second before it answers \"throttled (429)\" (class parameter rateLimit; 0: none). One request reads all objects of a volume, so 80 with 5 objects is Key Vault's 4,000 GETs per 10 s")
	flag.DurationVar(&cfg.rotation, "rotation-interval", 3*time.Second, "driver --rotation-interval; the rotation pass republishes after it")
	flag.StringVar(&modes, "cache", "on,off", "driver --cache settings to run, comma-separated")
	var syncModes string
	flag.StringVar(&syncModes, "sync", "off", "driver --sync-secrets settings to run, comma-separated (on: a real kube-apiserver + etcd from test/kubeapi receives the Secrets)")
	flag.StringVar(&cfg.binary, "secretfs", "", "secretfs binary to test (default: build ./cmd/secretfs)")
	flag.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.BoolVar(&cfg.keepLogs, "print-logs", false, "print the driver logs after each run")
	flag.Parse()
	for _, m := range strings.Split(modes, ",") {
		switch strings.TrimSpace(m) {
		case "on", "true":
			cfg.modes = append(cfg.modes, true)
		case "off", "false":
			cfg.modes = append(cfg.modes, false)
		default:
			fmt.Fprintf(os.Stderr, "bench: -cache takes on and/or off, not %q\n", m)
			os.Exit(2)
		}
	}
	var err error
	if cfg.syncModes, err = parseModes(syncModes); err != nil {
		fmt.Fprintf(os.Stderr, "bench: -sync: %v\n", err)
		os.Exit(2)
	}
	if cfg.volumes < 1 || cfg.objects < 1 || cfg.concurrency < 1 || cfg.volumes > 20000 || cfg.objects > 100 {
		fmt.Fprintln(os.Stderr, "bench: -volumes 1..20000, -objects 1..100, -concurrency >= 1")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root: the driver mounts a tmpfs per volume")
		os.Exit(1)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// result is one table row.
type result struct {
	cache             bool
	publish           stats
	rotation          stats
	unpublish         stats
	backend, throttle int64 // driver-side backend requests and 429s, publish phase
	rotBackend        int64 // backend requests of the rotation pass
	rotThrottle       int64
	sync              bool  // --sync-secrets
	syncRequests      int64 // API requests of the Secret sync, publish phase
	rotSyncRequests   int64 // and rotation pass
	rssMiB, anonMiB   float64
	// Driver CPU time (user + system) per call of each phase: unlike
	// latency, it does not depend on what else the machine is running.
	pubCPU, rotCPU, unpubCPU time.Duration
	unpublishFailures        int64
	leftMounts               int
}

type stats struct {
	p50, p99 time.Duration
	perSec   float64
	retries  int64 // calls kubelet would have retried (429, Aborted)
}

func run(cfg config) error {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "secretfs-bench-")
	if err != nil {
		return err
	}
	// Whatever happens, nothing stays mounted or on disk.
	defer func() {
		unmountUnder(dir)
		os.RemoveAll(dir)
	}()
	bin := cfg.binary
	if bin == "" {
		bin = filepath.Join(dir, "secretfs")
		fmt.Fprintln(os.Stderr, "building secretfs ...")
		if err := build(ctx, bin); err != nil {
			return err
		}
	}
	if err := writeClass(dir, cfg); err != nil {
		return err
	}
	if slices.Contains(cfg.syncModes, true) {
		stopAPI, err := startAPI(ctx, &cfg, dir)
		if err != nil {
			return err
		}
		defer stopAPI()
	}
	var rows []result
	for _, on := range cfg.modes {
		for _, sync := range cfg.syncModes {
			fmt.Fprintf(os.Stderr, "run: cache=%v sync=%v, %d volumes x %d objects, concurrency %d ...\n", on, sync, cfg.volumes, cfg.objects, cfg.concurrency)
			r, err := runOnce(ctx, cfg, bin, dir, on, sync)
			if err != nil {
				return fmt.Errorf("cache=%v sync=%v: %w", on, sync, err)
			}
			rows = append(rows, r)
		}
	}
	printTable(os.Stdout, cfg, rows)
	for _, r := range rows {
		if r.unpublishFailures > 0 || r.leftMounts > 0 {
			return fmt.Errorf("cache=%v: %d failed unpublishes, %d mounts left", r.cache, r.unpublishFailures, r.leftMounts)
		}
	}
	return nil
}

// build compiles ./cmd/secretfs of the module the harness is run in.
func build(ctx context.Context, out string) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return fmt.Errorf("run the harness inside the secretfs module (go env GOMOD: %v)", err)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./cmd/secretfs")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building secretfs: %w", err)
	}
	return nil
}

const (
	namespace = "bench"
	className = "load"
)

// writeClass writes the class: M generated objects of the fake backend with
// the injected latency and request limit.
func writeClass(dir string, cfg config) error {
	var objs strings.Builder
	for i := 0; i < cfg.objects; i++ {
		fmt.Fprintf(&objs, "        - |\n          objectName: object-%d\n          generate: %d\n", i, cfg.objectBytes)
	}
	params := fmt.Sprintf("    latency: %q\n", cfg.latency.String())
	if cfg.rateLimit > 0 {
		params += fmt.Sprintf("    rateLimit: %q\n", strconv.FormatFloat(cfg.rateLimit, 'f', -1, 64))
	}
	class := fmt.Sprintf(`apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: %s
  namespace: %s
spec:
  provider: fake
  parameters:
%s    objects: |
      array:
%s  # Synced only in -sync on runs (--sync-secrets); one Secret shared by every pod.
  secretObjects:
    - secretName: load-env
      type: Opaque
      data:
        - objectName: object-0
          key: OBJECT_0
`, className, namespace, params, objs.String())
	for _, d := range []string{"classes", "fake-data", "providers"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "classes", "load.yaml"), []byte(class), 0o600)
}

// driverProc is a running `secretfs driver`.
type driverProc struct {
	cmd     *exec.Cmd
	metrics string // base URL
	log     string
	exited  chan error
}

func startDriver(ctx context.Context, cfg config, bin, dir, kubeletDir string, cache, sync bool) (*driverProc, csi.NodeClient, func(), error) {
	port, err := freePort()
	if err != nil {
		return nil, nil, nil, err
	}
	sock := filepath.Join(dir, "csi.sock")
	os.Remove(sock)
	logPath := filepath.Join(dir, fmt.Sprintf("driver-cache-%v.log", cache))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, nil, err
	}
	args := []string{"driver",
		"--endpoint", "unix://" + sock,
		"--node-id", "bench-node",
		"--class-dir", filepath.Join(dir, "classes"),
		"--fake-data-dir", filepath.Join(dir, "fake-data"),
		"--backends", "fake",
		"--provider-dir", filepath.Join(dir, "providers"),
		"--kubelet-dir", kubeletDir,
		"--metrics-addr", "127.0.0.1:" + strconv.Itoa(port),
		"--health-addr", "",
		"--rotation-interval", cfg.rotation.String(),
		"--cache=" + strconv.FormatBool(cache),
		"--log-format", "json",
	}
	if sync {
		args = append(args, "--kubeconfig", cfg.kubeconfig, "--sync-secrets", "--events=false")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, nil, nil, err
	}
	p := &driverProc{cmd: cmd, metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port), log: logPath, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait(); logFile.Close() }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.stop()
		return nil, nil, nil, err
	}
	stopAll := func() { conn.Close(); p.stop() }
	ids := csi.NewIdentityClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, c := context.WithTimeout(ctx, time.Second)
		resp, err := ids.Probe(pctx, &csi.ProbeRequest{})
		c()
		if err == nil && resp.GetReady().GetValue() {
			break
		}
		select {
		case err := <-p.exited:
			conn.Close()
			return nil, nil, nil, fmt.Errorf("driver exited at start (%v); log: %s", err, tail(logPath))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stopAll()
			return nil, nil, nil, fmt.Errorf("driver not ready: %v; log: %s", err, tail(logPath))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p, csi.NewNodeClient(conn), stopAll, nil
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

func runOnce(ctx context.Context, cfg config, bin, dir string, cache, sync bool) (r result, err error) {
	r.cache, r.sync = cache, sync
	kubeletDir := filepath.Join(dir, "kubelet")
	if err := os.MkdirAll(kubeletDir, 0o750); err != nil {
		return r, err
	}
	defer func() {
		unmountUnder(kubeletDir)
		os.RemoveAll(kubeletDir)
	}()
	proc, node, stopDriver, err := startDriver(ctx, cfg, bin, dir, kubeletDir, cache, sync)
	if err != nil {
		return r, err
	}
	defer func() {
		stopDriver()
		if cfg.keepLogs || err != nil {
			fmt.Fprintf(os.Stderr, "--- driver log (cache=%v), last lines:\n%s\n", cache, tail(proc.log))
		}
	}()
	vols := make([]*csi.NodePublishVolumeRequest, cfg.volumes)
	for i := range vols {
		if vols[i], err = kubeletRequest(kubeletDir, i); err != nil {
			return r, err
		}
	}

	// Publish: every pod of the Deployment starts at once.
	pid := proc.cmd.Process.Pid
	cpu0, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	start := time.Now()
	r.publish, err = drive(ctx, cfg.concurrency, vols, func(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
		_, err := node.NodePublishVolume(ctx, req)
		return err
	})
	if err != nil {
		return r, fmt.Errorf("publish: %w", err)
	}
	cpu1, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	r.pubCPU = (cpu1 - cpu0) / time.Duration(len(vols))
	m, err := scrape(ctx, proc.metrics)
	if err != nil {
		return r, err
	}
	r.backend, r.throttle, r.syncRequests = m.backend, m.throttled, m.syncRequests
	if mounts := mountsUnder(kubeletDir); mounts != cfg.volumes {
		return r, fmt.Errorf("%d mounts after publishing %d volumes", mounts, cfg.volumes)
	}
	runtimeSettle()
	if r.rssMiB, r.anonMiB, err = rssMiB(proc.cmd.Process.Pid); err != nil {
		return r, err
	}

	// Rotation: kubelet republishes every volume periodically; once the
	// interval has passed since the first fetch, every volume is due.
	if wait := time.Until(start.Add(cfg.rotation + 100*time.Millisecond)); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	cpu2, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	r.rotation, err = drive(ctx, cfg.concurrency, vols, func(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
		_, err := node.NodePublishVolume(ctx, req)
		return err
	})
	if err != nil {
		return r, fmt.Errorf("rotation: %w", err)
	}
	cpu3, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	r.rotCPU = (cpu3 - cpu2) / time.Duration(len(vols))
	m2, err := scrape(ctx, proc.metrics)
	if err != nil {
		return r, err
	}
	r.rotBackend, r.rotThrottle = m2.backend-m.backend, m2.throttled-m.throttled
	r.rotSyncRequests = m2.syncRequests - m.syncRequests
	if m2.refreshFailed > 0 {
		fmt.Fprintf(os.Stderr, "note: %d refreshes failed in the rotation pass (throttled; the volumes kept their content)\n", m2.refreshFailed)
	}

	// Unpublish: the Deployment is deleted.
	cpu4, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	var failures atomic.Int64
	r.unpublish, err = drive(ctx, cfg.concurrency, vols, func(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
		_, err := node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
		if err != nil && status.Code(err) != codes.Aborted {
			failures.Add(1)
		}
		return err
	})
	r.unpublishFailures = failures.Load()
	if err != nil {
		return r, fmt.Errorf("unpublish: %w", err)
	}
	cpu5, err := cpuTime(pid)
	if err != nil {
		return r, err
	}
	r.unpubCPU = (cpu5 - cpu4) / time.Duration(len(vols))
	r.leftMounts = mountsUnder(kubeletDir)
	return r, nil
}

// kubeletRequest is what kubelet sends for pod i's inline volume: a
// per-pod directory, the pod's identity (all pods of one Deployment share
// the service account) and a per-pod token.
func kubeletRequest(kubeletDir string, i int) (*csi.NodePublishVolumeRequest, error) {
	uid := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	dir := filepath.Join(kubeletDir, "pods", uid, "volumes", "kubernetes.io~csi", "secrets")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(uid))
	return &csi.NodePublishVolumeRequest{
		VolumeId:   "csi-" + hex.EncodeToString(sum[:]),
		TargetPath: filepath.Join(dir, "mount"),
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
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
	}, nil
}

// drive runs call for every request at the given concurrency, retrying as
// kubelet does (with backoff) calls that failed Unavailable (throttled) or
// Aborted (busy). It returns latency percentiles of the successful calls.
func drive(ctx context.Context, concurrency int, reqs []*csi.NodePublishVolumeRequest, call func(context.Context, *csi.NodePublishVolumeRequest) error) (stats, error) {
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, len(reqs))
		retries   atomic.Int64
		firstErr  error
		next      atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(reqs) {
					return
				}
				backoff := 50 * time.Millisecond
				for {
					cctx, cancel := context.WithTimeout(ctx, 2*time.Minute) // kubelet's CSI timeout
					t0 := time.Now()
					err := call(cctx, reqs[i])
					took := time.Since(t0)
					cancel()
					if err == nil {
						mu.Lock()
						latencies = append(latencies, took)
						mu.Unlock()
						break
					}
					code := status.Code(err)
					if (code == codes.Unavailable || code == codes.Aborted) && ctx.Err() == nil {
						retries.Add(1)
						select {
						case <-time.After(backoff):
						case <-ctx.Done():
						}
						backoff = min(2*backoff, time.Second)
						continue
					}
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("volume %d: %w", i, err)
					}
					mu.Unlock()
					break
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return stats{}, firstErr
	}
	slices.Sort(latencies)
	return stats{
		p50:     percentile(latencies, .50),
		p99:     percentile(latencies, .99),
		perSec:  float64(len(reqs)) / elapsed.Seconds(),
		retries: retries.Load(),
	}, nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p+0.5)]
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

// rssMiB is the resident memory of pid: all of it (VmRSS) and the
// anonymous part (RssAnon: heap, stacks), without the binary's file pages.
func rssMiB(pid int) (rss, anon float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
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
	if rss, err = kb("VmRSS"); err != nil {
		return 0, 0, err
	}
	anon, err = kb("RssAnon")
	return rss, anon, err
}

// cpuTime is the user + system CPU time pid has used so far.
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
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

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
}

func printTable(w io.Writer, cfg config, rows []result) {
	fmt.Fprintf(w, "\nsecretfs load: %d volumes x %d objects (%d B), concurrency %d, backend latency %v, rate limit %g req/s, rotation interval %v\n\n",
		cfg.volumes, cfg.objects, cfg.objectBytes, cfg.concurrency, cfg.latency, cfg.rateLimit, cfg.rotation)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cache\tsync\tpublish p50 ms\tp99 ms\tpublishes/s\tCPU µs/publish\tbackend requests\tobject reads\t429s\tretries\tRSS MiB\tanon MiB\tfile MiB\trotation backend requests\trotation 429s\trotation p99 ms\tCPU µs/republish\tunpublish p99 ms\tCPU µs/unpublish\tfailed unpublishes\tsync API requests\trotation sync API requests\t")
	for _, r := range rows {
		mode := "off"
		if r.cache {
			mode = "on"
		}
		syncMode := "off"
		if r.sync {
			syncMode = "on"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.0f\t%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%d\t%d\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t\n", mode, syncMode,
			ms(r.publish.p50), ms(r.publish.p99), r.publish.perSec, r.pubCPU.Microseconds(), r.backend, (r.backend-r.throttle)*int64(cfg.objects), r.throttle, r.publish.retries,
			r.rssMiB, r.anonMiB, r.rssMiB-r.anonMiB, r.rotBackend, r.rotThrottle, ms(r.rotation.p99), r.rotCPU.Microseconds(), ms(r.unpublish.p99), r.unpubCPU.Microseconds(), r.unpublishFailures, r.syncRequests, r.rotSyncRequests)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nbackend requests: fetches the driver sent to the fake backend (driver metric secretfs_provider_fetches_total), throttled ones included;")
	fmt.Fprintln(w, "object reads: objects read by successful requests; retries: calls the harness retried like kubelet (throttled or busy);")
	fmt.Fprintln(w, "RSS: driver VmRSS with every volume mounted; anon: its RssAnon (heap and stacks); file: the rest (RssFile + RssShmem: the binary's")
	fmt.Fprintln(w, "pages, shared with the page cache and reclaimable); CPU: driver user + system time per call, 10 ms ticks spread over all calls.")
	fmt.Fprintln(w, "sync API requests: requests the Secret sync made to the API server (secretfs_secret_sync_requests_total); the class syncs one Secret.")
}
