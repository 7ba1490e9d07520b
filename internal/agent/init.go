package agent

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Stages of `secretfs run`, the values of stageEnv.
const (
	stageAgent = "agent" // in the private mount namespace: mounts, refreshes
	stageInit  = "init"  // pid 1 of the command's pid namespace
)

// stage returns this process's stage ("" for the first).
func stage() string { return os.Getenv(stageEnv) }

// runInit is the third stage: pid 1 of a pid namespace of its own, started
// by the agent for each run of the command. It starts the command, passes
// signals on (pid 1 gets only signals it handles, so the command, not pid 1,
// must be the one that decides about them), reaps every orphan, and exits
// with the command's exit code. When it exits or is killed, the kernel kills
// everything else in the pid namespace: nothing the command started can
// outlive it, and so nothing keeps the private mount namespace (and its
// tmpfs) alive once the agent is gone.
func runInit(argv []string, uid, gid int) (int, error) {
	if os.Getpid() != 1 {
		return 0, fmt.Errorf("%s=%s but this process is not pid 1 of a pid namespace", stageEnv, stageInit)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	chld := make(chan os.Signal, 1)
	signal.Notify(chld, syscall.SIGCHLD)

	// Descriptors the caller of secretfs leaked (not close-on-exec) stop
	// here: the command gets its three standard descriptors and nothing
	// else of root's.
	closeOnExecAbove2()
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return 127, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	// A session of its own, never the caller's: its controlling terminal,
	// if any, is the one the first stage made for it (pty.go), which it
	// gets as the first of its standard descriptors that is a terminal.
	attr := &syscall.SysProcAttr{Setsid: true}
	for fd := range 3 {
		if isTerminal(fd) {
			attr.Setctty, attr.Ctty = true, fd
			break
		}
	}
	if uid >= 0 {
		attr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	p, err := os.StartProcess(path, argv, &os.ProcAttr{
		Env:   withoutStage(os.Environ()),
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys:   attr,
	})
	if err != nil {
		code := 126
		if errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		return code, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	for {
		select {
		case s := <-sigs:
			_ = p.Signal(s)
		case <-chld:
			// Reap everything that has exited: the command and orphans.
			for {
				var ws unix.WaitStatus
				pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
				if err == unix.EINTR {
					continue
				}
				if err != nil || pid <= 0 {
					break
				}
				if pid == p.Pid {
					if ws.Signaled() {
						return 128 + int(ws.Signal()), nil
					}
					return ws.ExitStatus(), nil
				}
			}
		}
	}
}

// withoutStage is env without the stage marker.
func withoutStage(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, stageEnv+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// closeOnExecAbove2 marks every descriptor above 2 close-on-exec:
// close_range(2) (Linux 5.11), or one by one from /proc/self/fd.
func closeOnExecAbove2() {
	if unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}
