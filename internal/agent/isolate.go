package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// stageEnv marks the second stage of `secretfs run`: the same program,
// started again in a new mount namespace. The second stage checks that its
// mount namespace really differs from its parent's, so setting the variable
// by hand cannot make it mount on the host.
const stageEnv = "SECRETFS_RUN_STAGE"

// forwarded are the signals passed on to the command. Job-control signals
// (TSTP, TTIN, TTOU) and the ones the Go runtime or the kernel own (CHLD,
// URG, PIPE, KILL, STOP) are not.
var forwarded = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGALRM,
}

// isolate is the first stage of `secretfs run`: it starts this program again
// in a new mount namespace (clone(2) with CLONE_NEWNS: a multi-threaded Go
// process cannot unshare its own), passes signals on, and returns the second
// stage's exit code. The second stage dies with this process
// (PR_SET_PDEATHSIG), and the command with the second stage, so a kill -9 of
// either leaves a namespace without processes, which the kernel destroys
// together with its tmpfs: nothing is ever mounted in the host's namespace.
func isolate(target string, uid int) (int, error) {
	return reexec(target, reexecSpec{stage: stageAgent, uid: uid, terminal: true})
}

// reexecSpec says how reexec starts the second stage.
type reexecSpec struct {
	stage    string     // the value of stageEnv
	uid      int        // the owner of the command's terminal (terminal)
	terminal bool       // relay a terminal (pty.go); else the standard descriptors pass as they are
	files    []*os.File // passed on as descriptors 3, 4, ...
	env      []string   // variables not to pass on (names)
}

// reexec starts this program again as stage spec.stage in a new mount
// namespace at target (see isolate).
func reexec(target string, spec reexecSpec) (int, error) {
	parent, created, err := makeTarget(target)
	if err != nil {
		return 0, err
	}
	defer func() {
		if created {
			// Whatever happens to the second stage, do not leave the empty
			// directory behind: removed in the parent it was made in,
			// never through a symlink swapped in meanwhile.
			_ = unix.Unlinkat(parent, filepath.Base(target), unix.AT_REMOVEDIR)
		}
		unix.Close(parent)
	}()

	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)
	// The command never gets this process's terminal (pty.go).
	var tty *relay
	if spec.terminal {
		if tty, err = newRelay(spec.uid, inForeground(unix.Getpgrp())); err != nil {
			return 0, err
		}
	}
	if tty != nil {
		defer tty.finish()
	}

	// PR_SET_PDEATHSIG fires when the thread that started the child exits:
	// keep this goroutine on its thread until the child is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(withoutVars(os.Environ(), spec.env), stageEnv+"="+spec.stage)
	cmd.ExtraFiles = spec.files
	files := tty.files()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[1], files[2]
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS,
		Pdeathsig:  syscall.SIGKILL,
		// Its own process group: a terminal's Ctrl-C reaches the command
		// (in the foreground group) once, not once from the terminal and
		// again forwarded.
		Setpgid: true,
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting the agent in a new mount namespace: %w", err)
	}
	if tty != nil {
		tty.start()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGWINCH && tty != nil {
				tty.resize() // the kernel tells the command
				continue
			}
			_ = cmd.Process.Signal(s)
		case err := <-done:
			return exitCode(cmd.ProcessState, err), nil
		}
	}
}

// makeTarget creates target (mode 0700) and its parents if it is missing,
// and reports whether it did. It returns a descriptor (O_PATH) of the
// parent, where it looked and made the target.
func makeTarget(target string) (parent int, created bool, err error) {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return -1, false, err
	}
	parent, err = unix.Open(filepath.Dir(target), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, err
	}
	err = unix.Mkdirat(parent, filepath.Base(target), 0o700)
	switch {
	case err == nil:
		return parent, true, nil
	case errors.Is(err, unix.EEXIST):
		return parent, false, nil
	}
	unix.Close(parent)
	return -1, false, &fs.PathError{Op: "mkdir", Path: target, Err: err}
}

// exitCode is the code a shell would report: the exit status, or 128 plus
// the number of the signal that killed the process.
func exitCode(st *os.ProcessState, err error) int {
	if st == nil {
		if err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

// inForeground reports whether stdin is a terminal whose foreground
// process group is pgrp.
func inForeground(pgrp int) bool {
	fg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	return err == nil && fg == pgrp
}

// inPrivateNamespace reports whether this process's mount namespace differs
// from its parent's.
func inPrivateNamespace() (bool, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return false, err
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", os.Getppid()))
	if err != nil {
		return false, err
	}
	return self != parent, nil
}
