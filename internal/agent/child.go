package agent

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/secretfs/secretfs/internal/mask"
)

// child is one run of the command.
type child struct {
	pid     int
	started time.Time
	done    chan struct{} // closed when the process has exited
	code    int           // exit code, set before done is closed
}

// command is how the command is started, each time the same way.
type command struct {
	argv []string
	env  []string
	// mask, when set, filters the command's stdout and stderr (run --mask):
	// they are pipes to this process instead of its own descriptors.
	mask *masker
}

// start runs the command through the init stage (runInit), as this program
// started again in a new pid namespace, in its own process group, killed
// when this process dies. The extra environment is added to the inherited
// one. The init stage drops to the user and group and reports the command's
// exit code as its own.
func (c *command) start(extraEnv []string) (*child, error) {
	if _, err := exec.LookPath(c.argv[0]); err != nil {
		return nil, err
	}
	env := append(c.env[:len(c.env):len(c.env)], extraEnv...)
	env = append(env, stageEnv+"="+stageInit)
	ch := &child{done: make(chan struct{})}
	stdout, stderr, drained, err := c.outputs()
	if err != nil {
		return nil, err
	}
	started := make(chan error, 1)
	go func() {
		// PR_SET_PDEATHSIG fires when the thread that started the child
		// exits: keep this goroutine on its thread while the child lives.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := &exec.Cmd{Path: "/proc/self/exe", Args: os.Args, Env: env}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL, Setpgid: true}
		err := cmd.Start()
		if stdout != os.Stdout { // the write ends are the child's alone now
			stdout.Close()
			stderr.Close()
		}
		if err != nil {
			drained()
			started <- err
			return
		}
		ch.pid, ch.started = cmd.Process.Pid, time.Now()
		started <- nil
		err = cmd.Wait()
		ch.code = exitCode(cmd.ProcessState, err)
		// Every process of the pid namespace is gone with its init: the
		// pipes are at EOF, and what was held back is written before
		// the exit is reported.
		drained()
		close(ch.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", c.argv[0], err)
	}
	return ch, nil
}

// outputs returns the command's stdout and stderr and a function that
// returns once everything the command wrote has been passed on: this
// process's own descriptors, or with --mask the write ends of two pipes
// whose read ends are copied through the mask filters.
func (c *command) outputs() (stdout, stderr *os.File, drained func(), err error) {
	if c.mask == nil {
		return os.Stdout, os.Stderr, func() {}, nil
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, nil, err
	}
	mo, me := c.mask.writers(os.Stdout, os.Stderr)
	var wg sync.WaitGroup
	for _, p := range []struct {
		r *os.File
		w *mask.Writer
	}{{outR, mo}, {errR, me}} {
		wg.Go(func() {
			defer p.r.Close()
			// A failing destination (a closed pipe) ends the copy; the
			// pipe is drained anyway, so the command does not block.
			if _, err := io.Copy(p.w, p.r); err != nil {
				_, _ = io.Copy(io.Discard, p.r)
			}
			_ = p.w.Close()
		})
	}
	return outW, errW, wg.Wait, nil
}

// signal sends sig to the init stage, which passes it to the command (not
// to its process group: the command decides what its children get, as it
// would without secretfs); SIGKILL ends the whole pid namespace.
func (ch *child) signal(sig syscall.Signal) {
	select {
	case <-ch.done:
	default:
		_ = syscall.Kill(ch.pid, sig)
	}
}

// backoff spaces restarts: each restart waits twice as long as the one
// before (from min up to max) since the last start, and a command that ran
// at least max starts over at min.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

// wait returns how long to wait before starting again, for a command that
// was started at started and has run until now.
func (b *backoff) wait(started, now time.Time) time.Duration {
	ran := now.Sub(started)
	if b.next == 0 || ran >= b.max {
		b.next = b.min
	}
	w := b.next - ran
	b.next = min(2*b.next, b.max)
	return max(w, 0)
}
