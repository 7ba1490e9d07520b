package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/hook"
)

// supervisor runs the command of `secretfs run` and keeps its files fresh:
// it passes signals on, refreshes on the interval, acts on changes
// (OnChange) and returns the command's exit code when it exits on its own.
type supervisor struct {
	cfg  RunConfig
	log  *slog.Logger
	d    *driver.Driver
	req  *csi.NodePublishVolumeRequest
	sigs chan os.Signal
	// volume is where the files are read (--env): the held mount's root.
	volume string
	cmd    command
	hook   *changeHook
	back   backoff
}

// run starts the command and supervises it until it exits.
func (s *supervisor) run(ctx context.Context) (int, error) {
	ch, err := s.start()
	if err != nil {
		return 127, err
	}
	rctx, stopRefresh := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.refreshLoop(rctx)
	}()
	defer func() {
		stopRefresh()
		wg.Wait()
	}()

	var (
		restartAt <-chan time.Time // a stopped command starts again
		killAt    <-chan time.Time // a command that ignores SIGTERM on restart
		stopping  bool             // a restart has asked the command to stop
		exiting   bool             // secretfs was asked to stop: no restarts
		lastStart = ch.started
		lastCode  = 0
		ctxDone   = ctx.Done()
	)
	for {
		var exited <-chan struct{}
		if ch != nil {
			exited = ch.done
		}
		select {
		case sig := <-s.sigs:
			n := sig.(syscall.Signal)
			stop := n == syscall.SIGTERM || n == syscall.SIGINT || n == syscall.SIGQUIT
			if ch == nil { // between a restart's stop and start
				if stop {
					return 128 + int(n), nil
				}
				continue
			}
			exiting = exiting || stop
			ch.signal(n)
		case <-ctxDone:
			ctxDone = nil
			if ch == nil {
				return 128 + int(syscall.SIGTERM), nil
			}
			exiting = true
			ch.signal(syscall.SIGTERM)
		case <-exited:
			lastCode = ch.code
			if !stopping || exiting {
				s.log.Info("command exited", "code", ch.code)
				return ch.code, nil
			}
			stopping, killAt = false, nil
			wait := s.back.wait(lastStart, time.Now())
			s.log.Info("restarting the command after a change", "exit_code", ch.code, "in", wait)
			ch, restartAt = nil, time.After(wait)
		case <-restartAt:
			restartAt = nil
			next, err := s.start()
			if err != nil {
				wait := s.back.wait(time.Now(), time.Now())
				s.log.Error("restarting the command failed; trying again", "error", err, "in", wait, "last_exit_code", lastCode)
				restartAt = time.After(wait)
				continue
			}
			ch, lastStart = next, next.started
		case <-killAt:
			killAt = nil
			s.log.Warn("the command did not stop after SIGTERM; killing it", "timeout", s.cfg.StopTimeout)
			ch.signal(syscall.SIGKILL)
		case <-s.hook.changes:
			switch {
			case ch == nil || stopping: // the next start reads the new files
			case s.cfg.OnChange.Restart:
				stopping = true
				ch.signal(syscall.SIGTERM)
				killAt = time.After(s.cfg.StopTimeout)
			case s.cfg.OnChange.Signal != 0:
				s.log.Info("files changed; signalling the command", "signal", s.cfg.OnChange.Signal.String())
				ch.signal(s.cfg.OnChange.Signal)
			default:
				s.log.Info("files changed")
			}
		}
	}
}

// start starts the command with the environment variables read from the
// current files.
func (s *supervisor) start() (*child, error) {
	env, err := s.fileEnv()
	if err != nil {
		return nil, err
	}
	ch, err := s.cmd.start(env)
	if err != nil {
		return nil, err
	}
	s.log.Info("command started", "pid", ch.pid, "command", s.cfg.Command[0])
	return ch, nil
}

// maxEnvBytes bounds what --env may put into the environment: the kernel
// refuses larger single strings (MAX_ARG_STRLEN, 32 pages).
const maxEnvBytes = 128 << 10

// fileEnv reads the --env files. A value is the file's content as it is
// (no trailing newline is removed); it may not hold a NUL byte.
func (s *supervisor) fileEnv() ([]string, error) {
	out := make([]string, 0, len(s.cfg.Env))
	if len(s.cfg.Env) == 0 {
		return out, nil
	}
	// Through the held mount, never the target's path (target.go), and
	// never out of the volume.
	root, err := os.OpenRoot(s.volume)
	if err != nil {
		return nil, fmt.Errorf("--env: opening the volume: %w", err)
	}
	defer root.Close()
	for _, e := range s.cfg.Env {
		fi, err := root.Stat(e.File)
		if err != nil {
			return nil, fmt.Errorf("--env %s: object %q is not a file of the volume: %w", e.Name, e.File, err)
		}
		if !fi.Mode().IsRegular() || fi.Size() > maxEnvBytes {
			return nil, fmt.Errorf("--env %s: object %q is not a regular file of at most %d bytes", e.Name, e.File, maxEnvBytes)
		}
		b, err := root.ReadFile(e.File)
		if err != nil {
			return nil, fmt.Errorf("--env %s: %w", e.Name, err)
		}
		for _, c := range b {
			if c == 0 {
				return nil, fmt.Errorf("--env %s: object %q holds a NUL byte and cannot be an environment variable", e.Name, e.File)
			}
		}
		out = append(out, e.Name+"="+string(b))
	}
	return out, nil
}

// refreshLoop republishes the volume as kubelet would: the driver's
// rotation policy decides when to refetch, keeps the last good files when
// that fails, and tells changeHook when the files changed.
func (s *supervisor) refreshLoop(ctx context.Context) {
	tick := newRepublisher(s.d, s.req.VolumeId, s.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := s.d.NodePublishVolume(ctx, s.req); err != nil && ctx.Err() == nil {
			s.log.Warn("refresh failed; the command keeps the last good files", "error", err)
		}
		tick.follow()
	}
}

// changeHook reports refreshes that swapped in new files (from the
// republishes of refreshLoop and from provider watches alike). Changes that
// come faster than the supervisor acts on them are told once: the command
// reads the newest files either way.
type changeHook struct {
	changes chan struct{}
	// mask, when set, is told first (run --mask), so that the values of
	// the new files are masked from the change on.
	mask      atomic.Pointer[masker]
	published atomic.Bool // the first publish is not a change
}

func newChangeHook() *changeHook { return &changeHook{changes: make(chan struct{}, 1)} }

func (h *changeHook) Changed(context.Context, hook.Volume) {
	if !h.published.Load() {
		return
	}
	if m := h.mask.Load(); m != nil {
		m.changed()
	}
	select {
	case h.changes <- struct{}{}:
	default:
	}
}

func (h *changeHook) Gone(hook.Volume) {}
