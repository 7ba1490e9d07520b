package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The soak (-soak, make soak): what a node pays to have the driver, and
// whether anything grows with use. One driver, built as the image builds
// it, kubelet's call pattern, the fake backend without latency:
//
//  1. idle: resident memory (anon and file-backed) and CPU over -idle;
//  2. lifecycles: -soak-cycles publish + unpublish of distinct pods; after
//     the first -soak-warmup and at the end, after a GC, goroutines, open
//     descriptors, live heap, heap in use and resident memory are read
//     (the least of three readings: settled)
//     (/proc and the driver's /metrics), and the end must not be above the
//     warm-up level (the heap and RSS with the slack soakSlack allows);
//  3. rotation: -rotation-volumes volumes mounted, each republished by
//     "kubelet" every -rotation-interval with new content from the fake's
//     data directory every time, so every republish refreshes and writes;
//     CPU over -rotation-window, scaled to an hour at a 2-minute rotation.
//
// It fails (exit 1) on any growth, failed call, or mount left behind.

// soakConfig are the soak's flags.
type soakConfig struct {
	cycles, warmup int
	idle           time.Duration
	volumes        int
	window         time.Duration
	// rotation is the driver's --rotation-interval in the soak; "kubelet"
	// republishes every volume every rotation + 2 s, so each republish is due.
	rotation time.Duration
}

func (sc soakConfig) republishPeriod() time.Duration { return sc.rotation + 2*time.Second }

// soakSlack is how much the live heap and resident memory may be above
// their warm-up level at the end: what the heap after a forced GC varies by
// between readings (connections being torn down, the harness's own
// requests: up to 400 KiB seen) plus allocator noise; 512 KiB of live heap
// is 58 bytes a lifecycle over 9,000.
//
// Goroutines may be 2 above: the driver's timers (rotation sweeps,
// debounces) run short-lived ones that a reading can catch; a leak per
// lifecycle would be thousands.
var soakSlack = struct{ heapBytes, rssKiB, goroutines int64 }{heapBytes: 512 << 10, rssKiB: 2 << 10, goroutines: 2}

// snapshot is what the soak reads of the driver at one point.
type snapshot struct {
	goroutines, fds                   int64
	heapAlloc, heapInuse              int64 // after two GCs, with the garbage the GC request itself made
	anonKiB, fileKiB                  int64
	mounted, cacheEntries, budgetUsed int64
}

func (s snapshot) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, live heap %d KiB, heap in use %d KiB, RssAnon %d KiB, RssFile %d KiB, volumes %d, cache entries %d, budget used %d B",
		s.goroutines, s.fds, s.heapAlloc>>10, s.heapInuse>>10, s.anonKiB, s.fileKiB, s.mounted, s.cacheEntries, s.budgetUsed)
}

func soak(ctx context.Context, cfg config, sc soakConfig, bin, dir string) error {
	kubeletDir := filepath.Join(dir, "kubelet")
	if err := os.MkdirAll(kubeletDir, 0o750); err != nil {
		return err
	}
	defer func() {
		unmountUnder(kubeletDir)
		os.RemoveAll(kubeletDir)
	}()
	cfg.rotation = sc.rotation
	cfg.heapProfile = filepath.Join(dir, "heap.pprof") // serves pprof: heap?gc=1 runs a GC before a snapshot
	proc, err := startDriver(ctx, cfg, bin, dir, kubeletDir, runMode{cache: true, pattern: "kubelet"})
	if err != nil {
		return err
	}
	defer func() {
		proc.stop()
		if err != nil {
			fmt.Fprintf(os.Stderr, "--- driver log, last lines:\n%s\n", tail(proc.log))
		}
	}()
	pid := proc.cmd.Process.Pid
	out := os.Stdout
	fmt.Fprintf(out, "secretfs soak: binary %s (%.1f MiB), kubelet's call pattern, fake backend, %d objects x %d B\n\n", filepath.Base(bin), fileMiB(bin), cfg.objects, cfg.objectBytes)

	// 1. Idle.
	time.Sleep(2 * time.Second)
	idleCPU, err := cpuOver(ctx, pid, sc.idle)
	if err != nil {
		return err
	}
	idle, err := proc.snapshot(ctx, os.DevNull)
	if err != nil {
		return err
	}
	idleRate := float64(idleCPU) / float64(sc.idle)
	fmt.Fprintf(out, "idle: resident %.1f MiB (anon %.1f, file-backed %.1f); CPU %v over %v = %.2f CPU-s/hour\n  %v\n\n",
		float64(idle.anonKiB+idle.fileKiB)/1024, float64(idle.anonKiB)/1024, float64(idle.fileKiB)/1024, idleCPU.Round(time.Microsecond), sc.idle, idleRate*3600, idle)

	// 2. Lifecycles.
	caller := newKubeletCaller(proc.sock)
	lifecycle := func(ctx context.Context, v *volume) error {
		if err := caller.setUp(ctx, v); err != nil {
			return err
		}
		return caller.tearDown(ctx, v)
	}
	cycles := func(from, to int) error {
		vols := make([]*volume, 0, to-from)
		for i := from; i < to; i++ {
			vols = append(vols, newVolume(kubeletDir, i))
		}
		_, err := drive(ctx, cfg.concurrency, vols, lifecycle, nil)
		return err
	}
	cpu0, _ := cpuTotal(pid)
	start := time.Now()
	if err := cycles(0, sc.warmup); err != nil {
		return fmt.Errorf("lifecycles: %w", err)
	}
	warmHeap, endHeap := filepath.Join(dir, "heap-warm.pprof"), filepath.Join(dir, "heap-end.pprof")
	warm, err := proc.settled(ctx, warmHeap)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "after %d lifecycles: %v\n", sc.warmup, warm)
	step := (sc.cycles - sc.warmup + 2) / 3
	var end snapshot
	for done := sc.warmup; done < sc.cycles; {
		next := min(done+step, sc.cycles)
		if err := cycles(done, next); err != nil {
			return fmt.Errorf("lifecycles: %w", err)
		}
		done = next
		if end, err = proc.settled(ctx, endHeap); err != nil {
			return err
		}
		fmt.Fprintf(out, "after %d lifecycles: %v\n", done, end)
	}
	cpu1, _ := cpuTotal(pid)
	fmt.Fprintf(out, "%d lifecycles in %v at concurrency %d: %.0f µs driver CPU per lifecycle (4 CSI calls, each on a new connection)\n",
		sc.cycles, time.Since(start).Round(time.Millisecond), cfg.concurrency, float64((cpu1-cpu0).Microseconds())/float64(sc.cycles))
	var grew []string
	check := func(what string, got, limit int64) {
		if got > limit {
			grew = append(grew, fmt.Sprintf("%s %d > %d", what, got, limit))
		}
	}
	check("goroutines", end.goroutines, warm.goroutines+soakSlack.goroutines)
	check("open fds", end.fds, warm.fds)
	check("live heap bytes", end.heapAlloc, warm.heapAlloc+soakSlack.heapBytes)
	check("RssAnon KiB", end.anonKiB, warm.anonKiB+soakSlack.rssKiB)
	check("volumes", end.mounted, 0)
	check("cache entries", end.cacheEntries, 0)
	check("node budget used", end.budgetUsed, 0)
	check("mounts", int64(mountsUnder(kubeletDir)), 0)
	if len(grew) > 0 {
		// What the goroutines are doing says what leaks.
		dump := filepath.Join(dir, "goroutines.txt")
		if err := proc.profile(ctx, "goroutine?debug=1", dump); err == nil {
			b, _ := os.ReadFile(dump)
			fmt.Fprintf(out, "--- driver goroutines:\n%s\n", b)
		}
		// The heap profiles (after a GC) at both points, for
		// go tool pprof -sample_index=inuse_space -base warm end.
		for _, f := range []string{warmHeap, endHeap} {
			if b, err := os.ReadFile(f); err == nil {
				_ = os.WriteFile(filepath.Join(os.TempDir(), "secretfs-soak-"+filepath.Base(f)), b, 0o600)
			}
		}
		fmt.Fprintf(out, "heap profiles: go tool pprof -sample_index=inuse_space -base %s %s\n",
			filepath.Join(os.TempDir(), "secretfs-soak-heap-warm.pprof"), filepath.Join(os.TempDir(), "secretfs-soak-heap-end.pprof"))
		return fmt.Errorf("grew from lifecycle %d to %d: %s", sc.warmup, sc.cycles, strings.Join(grew, "; "))
	}
	fmt.Fprintf(out, "no growth from lifecycle %d to %d (live heap and RssAnon within %d KiB and %d KiB)\n\n", sc.warmup, sc.cycles, soakSlack.heapBytes>>10, soakSlack.rssKiB)

	// 3. Rotation.
	return rotation(ctx, cfg, sc, proc, caller, kubeletDir, dir, idleRate)
}

// rotation mounts sc.volumes volumes, republishes each every
// sc.republishPeriod() for sc.window with new content each time, and scales
// the CPU to an hour at a 2-minute rotation.
func rotation(ctx context.Context, cfg config, sc soakConfig, proc *driverProc, caller *kubeletCaller, kubeletDir, dir string, idleRate float64) error {
	out := os.Stdout
	pid := proc.cmd.Process.Pid
	vols := make([]*volume, sc.volumes)
	for i := range vols {
		vols[i] = newVolume(kubeletDir, 1_000_000+i)
	}
	if _, err := drive(ctx, cfg.concurrency, vols, caller.setUp, nil); err != nil {
		return fmt.Errorf("publishing %d volumes: %w", sc.volumes, err)
	}
	// From one rotation interval after the publishes on, every republish
	// is due.
	select {
	case <-time.After(sc.republishPeriod()):
	case <-ctx.Done():
		return ctx.Err()
	}
	before, err := scrapeAll(ctx, proc.metrics)
	if err != nil {
		return err
	}
	cpu0, err := cpuTotal(pid)
	if err != nil {
		return err
	}
	start := time.Now()
	republishes := 0
	for round := 1; time.Since(start) < sc.window; round++ {
		// New content for every object, so every due republish writes.
		if err := writeFakeData(dir, cfg.objects, cfg.objectBytes, round); err != nil {
			return err
		}
		roundStart := time.Now()
		gap := sc.republishPeriod() / time.Duration(len(vols))
		for i, v := range vols {
			select {
			case <-time.After(time.Until(roundStart.Add(time.Duration(i) * gap))):
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := caller.setUp(ctx, v); err != nil {
				return fmt.Errorf("republishing: %w", err)
			}
			republishes++
		}
		select {
		case <-time.After(time.Until(roundStart.Add(sc.republishPeriod()))):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	elapsed := time.Since(start)
	cpu1, err := cpuTotal(pid)
	if err != nil {
		return err
	}
	after, err := scrapeAll(ctx, proc.metrics)
	if err != nil {
		return err
	}
	mounted, err := proc.snapshot(ctx, os.DevNull)
	if err != nil {
		return err
	}
	refreshed := after["secretfs_volume_refreshes_total"] - before["secretfs_volume_refreshes_total"]
	cpu := cpu1 - cpu0
	work := float64(cpu) - idleRate*float64(elapsed)
	perRepublish := time.Duration(work / float64(republishes))
	const rotationsPerHour = 30 // every 2 minutes
	perHour := idleRate*3600 + float64(sc.volumes)*rotationsPerHour*perRepublish.Seconds()
	// kubelet republishes a volume at every pod sync (about once a
	// minute); the driver refreshes only when the rotation is due. Counting
	// every one of those as a refresh bounds the cost from above.
	bound := idleRate*3600 + float64(sc.volumes)*60*perRepublish.Seconds()
	fmt.Fprintf(out, "%d volumes: resident %.1f MiB (anon %.1f, file-backed %.1f)\n  %v\n", sc.volumes,
		float64(mounted.anonKiB+mounted.fileKiB)/1024, float64(mounted.anonKiB)/1024, float64(mounted.fileKiB)/1024, mounted)
	fmt.Fprintf(out, "rotation: %d republishes (%d refreshes) in %v, every volume every %v with new content: CPU %v, %v per republish above idle\n",
		republishes, int64(refreshed), elapsed.Round(time.Millisecond), sc.republishPeriod(), cpu.Round(time.Millisecond), perRepublish.Round(time.Microsecond))
	fmt.Fprintf(out, "scaled to %d volumes rotating every 2 minutes: %.1f CPU-s/hour (idle + %d x %d refreshes x %v); at most %.1f CPU-s/hour if every one of kubelet's once-a-minute republishes refreshed\n",
		sc.volumes, perHour, sc.volumes, rotationsPerHour, perRepublish.Round(time.Microsecond), bound)
	if int(refreshed) < republishes*9/10 {
		return fmt.Errorf("only %d of %d republishes refreshed: the rotation figures would be too low", int64(refreshed), republishes)
	}
	if _, err := drive(ctx, cfg.concurrency, vols, caller.tearDown, nil); err != nil {
		return fmt.Errorf("unpublishing: %w", err)
	}
	if n := mountsUnder(kubeletDir); n != 0 {
		return fmt.Errorf("%d mounts left after unpublishing", n)
	}
	return nil
}

// writeFakeData gives every object of the class new content (version n),
// through the fake backend's data directory: a temporary file renamed into
// place, so the fake never reads half a value.
func writeFakeData(dir string, objects, size, n int) error {
	nsDir := filepath.Join(dir, "fake-data", namespace)
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		return err
	}
	for i := 0; i < objects; i++ {
		val := fmt.Sprintf("rotation-%d-object-%d-", n, i)
		val += strings.Repeat("x", max(0, size-len(val)))
		tmp := filepath.Join(nsDir, ".tmp")
		if err := os.WriteFile(tmp, []byte(val), 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(nsDir, "object-"+strconv.Itoa(i))); err != nil {
			return err
		}
	}
	return nil
}

// snapshot reads the driver after a GC (pprof's heap?gc=1), a second
// after the last call: the server ends a closed connection's goroutines
// and descriptor shortly after the client closes it.
func (p *driverProc) snapshot(ctx context.Context, heapFile string) (snapshot, error) {
	var s snapshot
	time.Sleep(time.Second)
	// Resident memory first: making the heap profile that runs the GC
	// allocates in the driver.
	pid := p.cmd.Process.Pid
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	// Two GCs: what sync.Pools held survives the first one.
	for _, f := range []string{os.DevNull, heapFile} {
		if err := p.heapProfile(ctx, f); err != nil {
			return s, err
		}
	}
	m, err := scrapeAll(ctx, p.metrics)
	if err != nil {
		return s, err
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, err
	}
	kib := func(field string) int64 {
		for _, line := range strings.Split(string(st), "\n") {
			if rest, ok := strings.CutPrefix(line, field+":"); ok {
				v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				return v
			}
		}
		return -1
	}
	s = snapshot{
		goroutines: int64(m["go_goroutines"]), fds: int64(len(fds)),
		heapAlloc: int64(m["go_memstats_heap_alloc_bytes"]), heapInuse: int64(m["go_memstats_heap_inuse_bytes"]),
		anonKiB: kib("RssAnon"), fileKiB: kib("RssFile") + kib("RssShmem"),
		mounted: int64(m["secretfs_volumes_mounted"]), cacheEntries: int64(m["secretfs_cache_entries"]), budgetUsed: int64(m["secretfs_node_budget_used_bytes"]),
	}
	return s, nil
}

// settled is the least of three snapshots, field by field (resident
// memory from the first): the harness's own requests (the scrape, the GC)
// and the connections the server is still closing add goroutines, fds and
// heap for a moment, never take any away.
func (p *driverProc) settled(ctx context.Context, heapFile string) (snapshot, error) {
	s, err := p.snapshot(ctx, heapFile)
	for range 2 {
		if err != nil {
			return s, err
		}
		var t snapshot
		if t, err = p.snapshot(ctx, os.DevNull); err == nil {
			s.goroutines, s.fds = min(s.goroutines, t.goroutines), min(s.fds, t.fds)
			s.heapAlloc, s.heapInuse = min(s.heapAlloc, t.heapAlloc), min(s.heapInuse, t.heapInuse)
		}
	}
	return s, err
}

// scrapeAll reads /metrics into sums by metric name (over all labels).
func scrapeAll(ctx context.Context, url string) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping metrics: %w", err)
	}
	defer resp.Body.Close()
	return parseMetrics(resp.Body)
}

func parseMetrics(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		m[name] += v
	}
	return m, s.Err()
}

// cpuOver is the CPU time pid uses over d.
func cpuOver(ctx context.Context, pid int, d time.Duration) (time.Duration, error) {
	c0, err := cpuTotal(pid)
	if err != nil {
		return 0, err
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	c1, err := cpuTotal(pid)
	return c1 - c0, err
}

// cpuTotal is the CPU time of pid's threads in nanoseconds (the first
// field of /proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts 10 ms
// ticks, too coarse for an idle minute). Go does not end its threads, so
// the sum only grows.
func cpuTotal(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread is gone
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, err
		}
		total += time.Duration(ns)
	}
	return total, nil
}

func fileMiB(path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return float64(fi.Size()) / (1 << 20)
}
