package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// limitFlags are the caps a class or pod cannot raise: per volume (files,
// directories, depth; the byte cap is -tmpfs-size) and per node, and the
// CPUs the driver's Go code runs on.
type limitFlags struct {
	maxFiles, maxDirs, maxDepth, maxSteps int
	nodeBudget                            quantityFlag // 0: derived from the cgroup
	fetchBytes                            quantityFlag // 0: derived from the cgroup
	maxProcs                              int
	maxProcsSet                           bool // given on the command line
}

// DefaultMaxProcs is the default of -max-procs: the driver's work is
// system calls (mounts, files) and waiting on backends, which do not hold
// one of these threads, and every further one costs the Go scheduler CPU
// on each call (an idle thread woken to look for work, then parked again).
const DefaultMaxProcs = 1

func (l *limitFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&l.maxFiles, "max-files", driver.DefaultMaxFiles, "most files in one volume")
	fs.IntVar(&l.maxDirs, "max-dirs", driver.DefaultMaxDirs, "most directories in one volume")
	fs.IntVar(&l.maxDepth, "max-depth", driver.DefaultMaxDepth, "most path elements of a file path in a volume")
	fs.IntVar(&l.maxSteps, "max-steps", budget.DefaultMaxSteps, "most steps of one volume's computation over its class and values (key paths, templates): a template call, loop iteration, or KiB compared or copied is a step")
	fs.Var(&l.fetchBytes, strings.TrimPrefix(provider.InFlightFlag, "--"), "bytes of backend answers all fetches of the node may read and hold at once (beyond that a fetch fails Unavailable and is retried); default: a quarter of the driver's memory headroom (the container's memory limit minus the node budget), none without a limit")
	fs.IntVar(&l.maxProcs, "max-procs", DefaultMaxProcs, "most threads that run the driver's Go code at once (GOMAXPROCS; system calls such as mounts and file writes do not count); 0: Go's default, the node's CPUs or the container's CPU limit, at least 2. The GOMAXPROCS environment variable wins unless this flag is given")
	fs.Var(&l.nodeBudget, "node-budget", "bytes all volumes on the node may hold together (tmpfs pages are charged to the driver's memory cgroup); default: the container's memory limit minus max(64Mi, a quarter of it), or a quarter of the node's RAM without a limit")
}

// setProcs sets GOMAXPROCS from -max-procs, or leaves Go's own value (the
// GOMAXPROCS environment variable, or the CPUs) and says which it is.
func (l *limitFlags) setProcs(log *slog.Logger) error {
	env := os.Getenv("GOMAXPROCS")
	switch {
	case l.maxProcs < 0:
		return fmt.Errorf("-max-procs must be 0 or more, not %d", l.maxProcs)
	case env != "" && !l.maxProcsSet:
		log.Info("threads running Go code", "gomaxprocs", runtime.GOMAXPROCS(0), "source", "GOMAXPROCS environment variable")
		return nil
	case l.maxProcs == 0:
		log.Info("threads running Go code", "gomaxprocs", runtime.GOMAXPROCS(0), "source", "Go's default (-max-procs 0)")
		return nil
	}
	if env != "" {
		log.Warn("-max-procs overrides the GOMAXPROCS environment variable", "gomaxprocs", l.maxProcs, "environment", env)
	}
	runtime.GOMAXPROCS(l.maxProcs)
	log.Info("threads running Go code", "gomaxprocs", l.maxProcs, "source", "-max-procs "+strconv.Itoa(l.maxProcs))
	return nil
}

// resolve returns the node budget: the flag's, or derived from the
// driver's memory cgroup. Unless GOMEMLIMIT is set, the Go heap is held to
// the headroom outside the budget, so the collector works harder before the
// cgroup's limit is near.
func (l *limitFlags) resolve(log *slog.Logger) (int64, error) {
	limit, where, err := budget.MemoryLimit("/proc/self/cgroup", "/proc/self/mountinfo")
	if err != nil {
		log.Warn("cannot read the driver's memory limit from its cgroup", "err", err)
		limit = 0
	}
	if limit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(budget.Headroom(limit))
	}
	if l.nodeBudget.bytes > 0 {
		log.Info("node budget for secret volumes", "bytes", l.nodeBudget.bytes, "source", budget.Flag, "memory_limit", limit, "cgroup_file", where)
		return l.nodeBudget.bytes, nil
	}
	b, source, err := budget.Default()
	if err != nil {
		return 0, err
	}
	log.Info("node budget for secret volumes", "bytes", b, "source", source)
	return b, nil
}

// inFlight returns the bound of the node's fetches in flight: the flag's,
// or a quarter of the headroom the driver's memory limit leaves outside the
// node budget (16 MiB at the shipped 128 MiB), or none without a limit.
func (l *limitFlags) inFlight(log *slog.Logger) int64 {
	if l.fetchBytes.bytes > 0 {
		return l.fetchBytes.bytes
	}
	limit, _, err := budget.MemoryLimit("/proc/self/cgroup", "/proc/self/mountinfo")
	if err != nil || limit <= 0 {
		return 0
	}
	b := budget.Headroom(limit) / 4
	log.Info("bound of the node's fetches in flight", "bytes", b, "source", "memory limit", "flag", provider.InFlightFlag)
	return b
}
