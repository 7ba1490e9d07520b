package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/driver/tmpfs"
	"github.com/secretfs/secretfs/provider"
)

// RunConfig configures `secretfs run`: one class mounted for one command.
type RunConfig struct {
	// ClassFile is a YAML file with the class (ClassName picks one of
	// several). Without it the class is Classes' ClassName in Namespace;
	// NewClasses, when set, makes Classes in the stage that mounts only (an
	// API source watches the API server: the other stages have no use for
	// it).
	ClassFile  string
	ClassName  string
	Classes    class.Source
	NewClasses func(context.Context) (class.Source, error)
	Namespace  string
	// Target is where the command finds the files. It is created (0700) if
	// missing and removed when secretfs exits. The tmpfs is mounted only in
	// the command's private mount namespace. One run per target: removing
	// a directory detaches what other namespaces mounted on it.
	Target         string
	Interval       time.Duration
	ServiceAccount string
	Providers      func(name string) (provider.Provider, error)
	TmpfsSize      int64
	// UID and GID (>= 0) are the user and group the command runs as, with
	// no supplementary groups. Negative: root.
	UID, GID int
	// Owner owns the files (default driver.LocalOwner: root, 0700/0600).
	Owner driver.Owner
	// Token and TokenAudience: see Config.
	Token, TokenAudience string
	// Env puts the content of files into the command's environment at each
	// start.
	Env      []EnvVar
	OnChange OnChange
	// StopTimeout is how long a restart waits after SIGTERM before SIGKILL.
	StopTimeout time.Duration
	// Mask passes the command's stdout and stderr through a filter that
	// replaces the content of every file of the volume with "***"
	// (MaskBase64: their base64 forms too); see mask.go.
	Mask, MaskBase64 bool
	// Command is the program and its arguments.
	Command []string
	Logger  *slog.Logger
}

// TargetEnv is set in the command's environment to the directory of the
// files.
const TargetEnv = "SECRETFS_TARGET"

// DefaultRunTarget is the target of a run without one: a directory of its
// own per process under /run.
func DefaultRunTarget() string { return fmt.Sprintf("/run/secretfs/run-%d", os.Getpid()) }

// RunCommand runs cfg.Command with the class's files on a tmpfs at cfg.Target that
// only the command (and what it starts) can see, keeps the files fresh,
// tells the command about changes, and returns the command's exit code
// (128+N when signal N killed it). Nothing stays mounted afterwards.
//
// Run starts this program a second time in a new mount namespace (see
// isolate); that second stage calls RunCommand again, which then does the work.
// The program must therefore call RunCommand with the same configuration in both
// stages: build it from the same arguments.
func RunCommand(ctx context.Context, cfg RunConfig) (int, error) {
	if os.Geteuid() != 0 {
		return 0, fmt.Errorf("%w (running as uid %d)", ErrNotRoot, os.Geteuid())
	}
	if len(cfg.Command) == 0 {
		return 0, errors.New("no command to run")
	}
	if cfg.Target == "" {
		return 0, errors.New("no target directory")
	}
	target, err := filepath.Abs(cfg.Target)
	if err != nil {
		return 0, err
	}
	cfg.Target = target
	switch st := stage(); st {
	case "":
		return isolate(target, cfg.UID)
	case stageInit:
		return runInit(cfg.Command, cfg.UID, cfg.GID)
	case stageAgent:
	default:
		return 0, fmt.Errorf("%s=%q is not a stage of secretfs run", stageEnv, os.Getenv(stageEnv))
	}
	private, err := inPrivateNamespace()
	if err != nil {
		return 0, fmt.Errorf("checking the mount namespace: %w", err)
	}
	if !private {
		return 0, fmt.Errorf("%s is set but this process shares its parent's mount namespace; refusing to mount", stageEnv)
	}
	return runIsolated(ctx, cfg)
}

// runIsolated is the second stage, in its own mount namespace.
func runIsolated(ctx context.Context, cfg RunConfig) (int, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = driver.DefaultRotationInterval
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = "default"
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	// Signals from now on are the command's; collect them before anything
	// can take long.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)

	if err := privateNamespace(cfg.Target, log); err != nil {
		return 0, err
	}

	if cfg.ClassFile == "" && cfg.Classes == nil && cfg.NewClasses != nil {
		var err error
		if cfg.Classes, err = cfg.NewClasses(ctx); err != nil {
			return 0, err
		}
	}
	cls, classes, err := findClass(ctx, cfg.ClassFile, cfg.ClassName, cfg.Classes, cfg.Namespace)
	if err != nil {
		return 0, err
	}
	changes := newChangeHook()
	owner := cfg.Owner
	if owner == (driver.Owner{}) {
		owner = driver.LocalOwner
	}
	// The target is held by descriptor from here on (target.go).
	held, err := openTarget(cfg.Target)
	if err != nil {
		return 0, err
	}
	defer held.close()
	d, req, unpublish, err := mountHeld(ctx, held, cfg.Target, volumeSpec{
		cls: cls, classes: classes, providers: cfg.Providers, tmpfsSize: cfg.TmpfsSize, interval: cfg.Interval,
		serviceAccount: cfg.ServiceAccount, token: cfg.Token, tokenAudience: cfg.TokenAudience, owner: owner,
		hooks: []hook.Hook{changes}, log: log,
	})
	if err != nil {
		return 0, err
	}
	defer d.Close()
	changes.published.Store(true)
	defer func() {
		if err := unpublish(); err != nil {
			log.Error("unmounting", "target", cfg.Target, "error", err)
		}
	}()
	log.Info("mounted in a private mount namespace", "class", cls.Name, "namespace", cls.Namespace,
		"target", cfg.Target, "refresh", cfg.Interval, "on_change", cfg.OnChange.String())

	var masks *masker
	if cfg.Mask {
		if masks, err = newMasker(fdPath(held.mount), cfg.MaskBase64, log); err != nil {
			return 0, err
		}
		changes.mask.Store(masks)
	}
	s := &supervisor{cfg: cfg, log: log, d: d, req: req, sigs: sigs, hook: changes, volume: fdPath(held.mount),
		back: backoff{min: time.Second, max: time.Minute}}
	s.cmd = command{argv: cfg.Command, env: childEnv(cfg.Target), mask: masks}
	return s.run(ctx)
}

// findClass finds the class to mount, in file (name picks one of several)
// or else in classes (the API server), and the source the driver reads it
// from on every refresh.
func findClass(ctx context.Context, file, name string, classes class.Source, ns string) (*class.Class, class.Source, error) {
	if file != "" {
		cls, err := pickClass(file, name)
		if err != nil {
			return nil, nil, err
		}
		return cls, class.NewFile(file), nil
	}
	if classes == nil || name == "" {
		return nil, nil, errors.New("no class: give a class file, or a class name and an API server")
	}
	if ns == "" {
		ns = "default"
	}
	cls, err := classes.Get(ctx, ns, name)
	if err != nil {
		return nil, nil, fmt.Errorf("class %s/%s: %w", ns, name, err)
	}
	return cls, classes, nil
}

// privateNamespace readies the second stage's new mount namespace: mounts
// made here never propagate to the host, mounts the host makes later still
// reach it (slave, as systemd's PrivateTmp does), and no other secretfs
// tmpfs stays in it but target.
func privateNamespace(target string, log *slog.Logger) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making the mount namespace private: %w", err)
	}
	detachOthers(target, log)
	return nil
}

// detachOthers removes from this namespace the copies of every other
// secretfs tmpfs (pods' volumes, other agents): the command has no business
// with them, and a copy held here would keep their secrets alive after the
// host unmounts them.
func detachOthers(target string, log *slog.Logger) {
	mounts, err := tmpfs.List()
	if err != nil {
		log.Warn("listing mounts", "error", err)
		return
	}
	for _, m := range mounts {
		if m == target {
			continue
		}
		if err := unix.Unmount(m, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			log.Warn("detaching another secretfs volume from the private namespace", "target", m, "error", err)
		}
	}
}

// childEnv is this process's environment without the stage marker, with
// SECRETFS_TARGET.
func childEnv(target string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, stageEnv+"=") && !strings.HasPrefix(kv, TargetEnv+"=") {
			env = append(env, kv)
		}
	}
	return append(env, TargetEnv+"="+target)
}
