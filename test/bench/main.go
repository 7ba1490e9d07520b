// Command bench is the load harness of the secretfs CSI driver. It drives the
// real `secretfs driver` binary over its real unix socket, with real tmpfs
// mounts, the way kubelet does (-pattern kubelet, the default): a new gRPC
// connection for every CSI call, two NodeGetCapabilities probes before each
// NodePublishVolume, kubelet's volume handle and target layout
// (<root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount, vol_data.json
// next to it) and kubelet's cleanup after NodeUnpublishVolume. -pattern
// shared sends every call over one connection without probes instead.
//
// It builds the binary, starts it with a class directory and the fake
// backend (injected latency and a Key Vault-like request limit), publishes N
// volumes of an M-object class at concurrency C, republishes them all after
// the rotation interval, unpublishes them, and prints per run (driver
// setting x pattern) and phase: operations/s, p50/p90/p99 of the whole
// kubelet operation, the driver's CPU time (user + system, /proc/<pid>/stat)
// per operation and per volume lifecycle (publish + unpublish), backend
// requests (from the driver's /metrics), and the driver's RSS with every
// volume mounted, anonymous and file-backed.
//
// It stops by itself (-timeout), and removes every mount and file it made,
// also on failure or Ctrl-C. It must run as root (tmpfs mounts):
//
//	go run ./test/bench                                  # CI size: 200 x 5, C=50
//	go run ./test/bench -volumes 1000 -cache on -latency 0s -rate-limit 0 -pattern kubelet,shared
//	go run ./test/bench -cpuprofile cpu.pprof -cpuprofile-seconds 5   # driver CPU profile (pprof over a unix socket)
//	go run ./test/bench -volumes 1000 -heapprofile heap.pprof         # driver heap with every volume mounted
//	go run ./test/bench -soak -concurrency 8                         # make soak: idle cost, no growth, rotation (soak.go)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

type config struct {
	volumes           int
	objects           int
	objectBytes       int
	concurrency       int
	latency           time.Duration
	rateLimit         float64
	rotation          time.Duration
	modes             []bool // cache on/off
	syncModes         []bool // --sync-secrets off/on
	kubeconfig        string // of the API server the sync writes to (sync.go)
	patterns          []string
	binary            string
	timeout           time.Duration
	keepLogs          bool
	cpuProfile        string
	cpuProfileSeconds int
	heapProfile       string
	strip             bool // build as the image does (-ldflags '-s -w')
}

func main() {
	var cfg config
	var modes, patterns string
	flag.IntVar(&cfg.volumes, "volumes", 200, "volumes (pods) to publish")
	flag.IntVar(&cfg.objects, "objects", 5, "objects (files) per volume")
	flag.IntVar(&cfg.objectBytes, "object-bytes", 64, "bytes per object")
	flag.IntVar(&cfg.concurrency, "concurrency", 50, "concurrent operations, as kubelet's pod workers")
	flag.DurationVar(&cfg.latency, "latency", 20*time.Millisecond, "fake backend latency per request (class parameter latency)")
	flag.Float64Var(&cfg.rateLimit, "rate-limit", 80, "fake backend requests per second before it answers \"throttled (429)\" (class parameter rateLimit; 0: none). One request reads all objects of a volume, so 80 with 5 objects is Key Vault's 4,000 GETs per 10 s")
	flag.DurationVar(&cfg.rotation, "rotation-interval", 3*time.Second, "driver --rotation-interval; the rotation pass republishes after it")
	flag.StringVar(&modes, "cache", "on,off", "driver --cache settings to run, comma-separated")
	var syncModes string
	flag.StringVar(&syncModes, "sync", "off", "driver --sync-secrets settings to run, comma-separated (on: a real kube-apiserver + etcd from test/kubeapi receives the Secrets)")
	flag.StringVar(&patterns, "pattern", "kubelet", "call patterns to run, comma-separated: kubelet (a connection per call, two capability probes per publish) and/or shared (one connection, no probes)")
	flag.StringVar(&cfg.binary, "secretfs", "", "secretfs binary to test (default: build ./cmd/secretfs)")
	flag.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.BoolVar(&cfg.keepLogs, "print-logs", false, "print the driver logs after each run")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the driver, from the start of the publish pass, to this file (the driver serves pprof on a unix socket)")
	flag.IntVar(&cfg.cpuProfileSeconds, "cpuprofile-seconds", 5, "length of the CPU profile")
	flag.StringVar(&cfg.heapProfile, "heapprofile", "", "write a heap profile of the driver, taken with every volume mounted (after a GC), to this file")
	var sc soakConfig
	soakMode := flag.Bool("soak", false, "run the soak instead (soak.go): idle cost, -soak-cycles lifecycles with no growth after -soak-warmup, and rotation of -rotation-volumes volumes; the driver is built as the image builds it")
	flag.IntVar(&sc.cycles, "soak-cycles", 10000, "soak: publish + unpublish lifecycles")
	flag.IntVar(&sc.warmup, "soak-warmup", 1000, "soak: lifecycles before the level nothing may grow above")
	flag.DurationVar(&sc.idle, "idle", 45*time.Second, "soak: how long idle CPU is measured")
	flag.IntVar(&sc.volumes, "rotation-volumes", 110, "soak: volumes mounted during the rotation phase (kubelet's default pod limit)")
	flag.DurationVar(&sc.window, "rotation-window", time.Minute, "soak: how long the rotation phase runs")
	flag.DurationVar(&sc.rotation, "soak-rotation-interval", 10*time.Second, "soak: the driver's --rotation-interval in the rotation phase (scaled to 2 minutes in the report)")
	flag.Parse()
	var err error
	if cfg.modes, err = parseModes(modes); err != nil {
		fmt.Fprintf(os.Stderr, "bench: -cache: %v\n", err)
		os.Exit(2)
	}
	if cfg.syncModes, err = parseModes(syncModes); err != nil {
		fmt.Fprintf(os.Stderr, "bench: -sync: %v\n", err)
		os.Exit(2)
	}
	for _, p := range strings.Split(patterns, ",") {
		switch p = strings.TrimSpace(p); p {
		case "kubelet", "shared":
			cfg.patterns = append(cfg.patterns, p)
		default:
			fmt.Fprintf(os.Stderr, "bench: -pattern takes kubelet and/or shared, not %q\n", p)
			os.Exit(2)
		}
	}
	if cfg.volumes < 1 || cfg.objects < 1 || cfg.concurrency < 1 || cfg.volumes > 20000 || cfg.objects > 100 {
		fmt.Fprintln(os.Stderr, "bench: -volumes 1..20000, -objects 1..100, -concurrency >= 1")
		os.Exit(2)
	}
	if (cfg.cpuProfile != "" || cfg.heapProfile != "") && len(cfg.modes)*len(cfg.syncModes)*len(cfg.patterns) != 1 {
		fmt.Fprintln(os.Stderr, "bench: -cpuprofile and -heapprofile profile one run: give one -cache and -sync setting and one -pattern")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root: the driver mounts a tmpfs per volume")
		os.Exit(1)
	}
	if *soakMode {
		if sc.cycles < sc.warmup+1 || sc.warmup < 1 || sc.volumes < 1 || sc.idle <= 0 || sc.window <= 0 {
			fmt.Fprintln(os.Stderr, "bench: -soak-cycles > -soak-warmup >= 1, -rotation-volumes >= 1, -idle and -rotation-window > 0")
			os.Exit(2)
		}
		cfg.latency, cfg.rateLimit, cfg.strip = 0, 0, true
		if err := run(cfg, func(ctx context.Context, bin, dir string) error { return soak(ctx, cfg, sc, bin, dir) }); err != nil {
			fmt.Fprintf(os.Stderr, "soak: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := run(cfg, nil); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// run builds the driver (unless -secretfs names one) and writes the class
// into a temporary directory it removes at the end, then runs the load runs
// or, when given, instead.
func run(cfg config, instead func(ctx context.Context, bin, dir string) error) error {
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
	for _, f := range []*string{&cfg.cpuProfile, &cfg.heapProfile} {
		if *f != "" {
			if *f, err = filepath.Abs(*f); err != nil {
				return err
			}
		}
	}
	bin := cfg.binary
	if bin == "" {
		bin = filepath.Join(dir, "secretfs")
		fmt.Fprintln(os.Stderr, "building secretfs ...")
		if err := build(ctx, bin, cfg.strip); err != nil {
			return err
		}
	}
	if err := writeClass(dir, cfg); err != nil {
		return err
	}
	if instead != nil {
		return instead(ctx, bin, dir)
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
			for _, pattern := range cfg.patterns {
				fmt.Fprintf(os.Stderr, "run: cache=%v sync=%v, pattern %s, %d volumes x %d objects, concurrency %d ...\n", on, sync, pattern, cfg.volumes, cfg.objects, cfg.concurrency)
				r, err := runOnce(ctx, cfg, bin, dir, runMode{cache: on, sync: sync, pattern: pattern})
				if err != nil {
					return fmt.Errorf("cache=%v sync=%v, pattern %s: %w", on, sync, pattern, err)
				}
				rows = append(rows, r)
			}
		}
	}
	printTable(os.Stdout, cfg, rows)
	for _, r := range rows {
		if r.unpublishFailures > 0 || r.leftMounts > 0 {
			return fmt.Errorf("cache=%v sync=%v, pattern %s: %d failed unpublishes, %d mounts left", r.cache, r.sync, r.pattern, r.unpublishFailures, r.leftMounts)
		}
	}
	return nil
}

// build compiles ./cmd/secretfs of the module the harness is run in;
// strip builds it as the image does (-ldflags '-s -w', -tags grpcnotrace),
// which changes the binary's file-backed pages.
func build(ctx context.Context, out string, strip bool) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		return fmt.Errorf("run the harness inside the secretfs module (go env GOMOD: %v)", err)
	}
	args := []string{"build", "-trimpath", "-o", out}
	if strip {
		args = append(args, "-ldflags", "-s -w", "-tags", "grpcnotrace")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/secretfs")...)
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

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64)
}

func printTable(w io.Writer, cfg config, rows []result) {
	fmt.Fprintf(w, "\nsecretfs load: %d volumes x %d objects (%d B), concurrency %d, backend latency %v, rate limit %g req/s, rotation interval %v\n\n",
		cfg.volumes, cfg.objects, cfg.objectBytes, cfg.concurrency, cfg.latency, cfg.rateLimit, cfg.rotation)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cache\tsync\tpattern\tphase\tCSI calls/op\tops/s\tp50 ms\tp90 ms\tp99 ms\tCPU µs/op\tretries\tbackend requests\t429s\tsync API requests\t")
	for _, r := range rows {
		for i, ph := range r.phases {
			backend, throttle, syncReqs := "", "", ""
			switch i {
			case publishPhase:
				backend, throttle, syncReqs = strconv.FormatInt(r.backend, 10), strconv.FormatInt(r.throttle, 10), strconv.FormatInt(r.syncRequests, 10)
			case republishPhase:
				backend, throttle, syncReqs = strconv.FormatInt(r.rotBackend, 10), strconv.FormatInt(r.rotThrottle, 10), strconv.FormatInt(r.rotSyncRequests, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t\n", onOff(r.cache), onOff(r.sync), r.pattern, phaseNames[i], r.rpcs[i],
				ph.perSec, ms(ph.p50), ms(ph.p90), ms(ph.p99), ph.cpu.Microseconds(), ph.retries, backend, throttle, syncReqs)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cache\tsync\tpattern\tCPU µs/lifecycle\tRSS MiB\tanon MiB\tfile MiB\tfailed unpublishes\tmounts left\t")
	for _, r := range rows {
		life := r.phases[publishPhase].cpu + r.phases[unpublishPhase].cpu
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1f\t%.1f\t%.1f\t%d\t%d\t\n", onOff(r.cache), onOff(r.sync), r.pattern, life.Microseconds(), r.mem.rss, r.mem.anon, r.mem.file, r.unpublishFailures, r.leftMounts)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nop: one kubelet operation (publish: the probes and NodePublishVolume; unpublish: NodeUnpublishVolume and kubelet's cleanup), timed whole;")
	fmt.Fprintln(w, "CPU: driver user + system time per operation (10 ms ticks spread over all operations); lifecycle: publish + unpublish;")
	fmt.Fprintln(w, "backend requests: fetches the driver sent to the fake backend (secretfs_provider_fetches_total), throttled ones included;")
	fmt.Fprintln(w, "retries: operations the harness retried like kubelet (throttled or busy); RSS: driver VmRSS with every volume mounted;")
	fmt.Fprintln(w, "anon: RssAnon (heap and stacks); file: RssFile + RssShmem (the binary's pages, shared with the page cache and reclaimable);")
	fmt.Fprintln(w, "sync API requests: requests the Secret sync made to the API server (secretfs_secret_sync_requests_total); the class syncs one Secret.")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
