package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// runMode is one run's driver settings and call pattern.
type runMode struct {
	cache, sync bool // --cache, --sync-secrets
	pattern     string
}

// result is one run: one driver setting under one call pattern.
type result struct {
	cache   bool
	sync    bool
	pattern string
	rpcs    [3]int // CSI calls per operation of each phase
	phases  [3]phase
	// backend requests and 429s of the publish and the rotation pass
	backend, throttle       int64
	rotBackend, rotThrottle int64
	// API requests of the Secret sync, publish phase and rotation pass
	syncRequests, rotSyncRequests int64
	mem                           memory // with every volume mounted
	unpublishFailures             int64
	leftMounts                    int
}

const (
	publishPhase = iota
	republishPhase
	unpublishPhase
)

var phaseNames = [3]string{"publish", "republish", "unpublish"}

// phase is what one pass over every volume measured.
type phase struct {
	p50, p90, p99 time.Duration
	perSec        float64
	retries       int64 // operations kubelet would have retried (429, Aborted)
	// Driver CPU time (user + system) per operation: unlike latency, it
	// does not depend on what else the machine is running.
	cpu time.Duration
}

func runOnce(ctx context.Context, cfg config, bin, dir string, mode runMode) (r result, err error) {
	r.cache, r.sync, r.pattern = mode.cache, mode.sync, mode.pattern
	kubeletDir := filepath.Join(dir, "kubelet")
	if err := os.MkdirAll(kubeletDir, 0o750); err != nil {
		return r, err
	}
	defer func() {
		unmountUnder(kubeletDir)
		os.RemoveAll(kubeletDir)
	}()
	proc, err := startDriver(ctx, cfg, bin, dir, kubeletDir, mode)
	if err != nil {
		return r, err
	}
	defer func() {
		proc.stop()
		if cfg.keepLogs || err != nil {
			fmt.Fprintf(os.Stderr, "--- driver log (cache=%v sync=%v), last lines:\n%s\n", mode.cache, mode.sync, tail(proc.log))
		}
	}()
	var caller csiCaller
	switch mode.pattern {
	case "kubelet":
		caller = newKubeletCaller(proc.sock)
	case "shared":
		if caller, err = newSharedCaller(proc.sock); err != nil {
			return r, err
		}
	}
	defer caller.close()
	r.rpcs = [3]int{caller.rpcsPerSetUp(), caller.rpcsPerSetUp(), caller.rpcsPerTearDown()}
	vols := make([]*volume, cfg.volumes)
	for i := range vols {
		vols[i] = newVolume(kubeletDir, i)
	}
	pid := proc.cmd.Process.Pid
	// pass runs op over every volume and measures the driver's CPU time.
	pass := func(op func(context.Context, *volume) error, count func(error)) (phase, error) {
		cpu0, err := cpuTime(pid)
		if err != nil {
			return phase{}, err
		}
		ph, err := drive(ctx, cfg.concurrency, vols, op, count)
		if err != nil {
			return ph, err
		}
		cpu1, err := cpuTime(pid)
		ph.cpu = (cpu1 - cpu0) / time.Duration(len(vols))
		return ph, err
	}

	profiled := make(chan error, 1)
	if cfg.cpuProfile != "" {
		go func() { profiled <- proc.cpuProfile(ctx, cfg.cpuProfileSeconds, cfg.cpuProfile) }()
		time.Sleep(100 * time.Millisecond) // the profile has started
	} else {
		profiled <- nil
	}

	// Publish: every pod of the Deployment starts at once.
	start := time.Now()
	if r.phases[publishPhase], err = pass(caller.setUp, nil); err != nil {
		return r, fmt.Errorf("publish: %w", err)
	}
	m, err := scrape(ctx, proc.metrics)
	if err != nil {
		return r, err
	}
	r.backend, r.throttle, r.syncRequests = m.backend, m.throttled, m.syncRequests
	if mounts := mountsUnder(kubeletDir); mounts != cfg.volumes {
		return r, fmt.Errorf("%d mounts after publishing %d volumes", mounts, cfg.volumes)
	}
	runtimeSettle()
	if r.mem, err = memoryOf(pid); err != nil {
		return r, err
	}
	if cfg.heapProfile != "" {
		if err := proc.heapProfile(ctx, cfg.heapProfile); err != nil {
			return r, err
		}
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
	if r.phases[republishPhase], err = pass(caller.setUp, nil); err != nil {
		return r, fmt.Errorf("rotation: %w", err)
	}
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
	var failures atomic.Int64
	r.phases[unpublishPhase], err = pass(caller.tearDown, func(err error) {
		if status.Code(err) != codes.Aborted {
			failures.Add(1)
		}
	})
	r.unpublishFailures = failures.Load()
	if err != nil {
		return r, fmt.Errorf("unpublish: %w", err)
	}
	r.leftMounts = mountsUnder(kubeletDir)
	if err := <-profiled; err != nil {
		return r, err
	}
	return r, nil
}

// drive runs op for every volume at the given concurrency, retrying as
// kubelet does (with backoff) operations that failed Unavailable
// (throttled) or Aborted (busy); failed is told of every failure. It
// returns latency percentiles of the successful operations.
func drive(ctx context.Context, concurrency int, vols []*volume, op func(context.Context, *volume) error, failed func(error)) (phase, error) {
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, len(vols))
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
				if i >= len(vols) {
					return
				}
				backoff := 50 * time.Millisecond
				for {
					cctx, cancel := context.WithTimeout(ctx, 2*time.Minute) // kubelet's CSI timeout
					t0 := time.Now()
					err := op(cctx, vols[i])
					took := time.Since(t0)
					cancel()
					if err == nil {
						mu.Lock()
						latencies = append(latencies, took)
						mu.Unlock()
						break
					}
					if failed != nil {
						failed(err)
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
		return phase{}, firstErr
	}
	slices.Sort(latencies)
	return phase{
		p50:     percentile(latencies, .50),
		p90:     percentile(latencies, .90),
		p99:     percentile(latencies, .99),
		perSec:  float64(len(vols)) / elapsed.Seconds(),
		retries: retries.Load(),
	}, nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p+0.5)]
}
