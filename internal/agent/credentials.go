package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/internal/unixsock"
	"github.com/secretfs/secretfs/provider"
)

// CredentialsConfig configures `secretfs credentials`: one class served to
// systemd units as credentials (LoadCredential=ID:/path/to/socket).
type CredentialsConfig struct {
	// ClassFile, ClassName, NewClasses, Namespace: the class, as for
	// RunConfig.
	ClassFile  string
	ClassName  string
	NewClasses func(context.Context) (class.Source, error)
	Namespace  string
	// Socket is the path of the socket to listen on. Empty: the socket
	// systemd passed (socket activation, LISTEN_FDS=1).
	Socket string
	// Target is the mount point of the class's tmpfs, mounted only in the
	// server's private mount namespace (default: credentials-PID next to
	// the socket, or under /run/secretfs when activated).
	Target         string
	Interval       time.Duration
	ServiceAccount string
	Providers      func(name string) (provider.Provider, error)
	TmpfsSize      int64
	// Token and TokenAudience: see Config.
	Token, TokenAudience string
	// Allow says which units get which credential (see CredentialRules).
	Allow  CredentialRules
	Limits CredentialLimits
	Logger *slog.Logger
}

// stageCredentials is the second stage of `secretfs credentials`: in its own
// mount namespace, the listening socket at descriptor 3.
const stageCredentials = "credentials"

// Systemd's socket activation variables (sd_listen_fds(3)).
const (
	listenPIDEnv   = "LISTEN_PID"
	listenFDsEnv   = "LISTEN_FDS"
	listenNamesEnv = "LISTEN_FDNAMES"
)

// Credentials serves the files of cfg's class to systemd units until ctx is
// done (see credserve.go for the protocol). Like RunCommand it runs in two
// stages: the first holds the socket (made here, or passed by systemd) and
// starts this program again in a new mount namespace, where the second
// mounts the class on a tmpfs nobody else sees, keeps it fresh and serves
// it. The program must call Credentials with the same configuration in
// both stages. The socket made here is removed on return, however the
// second stage ended.
func Credentials(ctx context.Context, cfg CredentialsConfig) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w (running as uid %d)", ErrNotRoot, os.Geteuid())
	}
	if err := cfg.Limits.Check(); err != nil {
		return err
	}
	switch st := stage(); st {
	case "":
		return credentialsFirst(cfg)
	case stageCredentials:
	default:
		return fmt.Errorf("%s=%q is not a stage of secretfs credentials", stageEnv, st)
	}
	private, err := inPrivateNamespace()
	if err != nil {
		return fmt.Errorf("checking the mount namespace: %w", err)
	}
	if !private {
		return fmt.Errorf("%s is set but this process shares its parent's mount namespace; refusing to mount", stageEnv)
	}
	return credentialsIsolated(ctx, cfg)
}

// credentialsTarget is cfg.Target or its default for the first stage's pid.
func credentialsTarget(cfg CredentialsConfig, pid int) (string, error) {
	t := cfg.Target
	if t == "" {
		dir := "/run/secretfs"
		if cfg.Socket != "" {
			dir = filepath.Dir(cfg.Socket)
		}
		t = filepath.Join(dir, "credentials-"+strconv.Itoa(pid))
	}
	return filepath.Abs(t)
}

// credentialsFirst is the first stage: the socket, then the second stage.
func credentialsFirst(cfg CredentialsConfig) error {
	sock, err := credentialsListener(cfg.Socket)
	if err != nil {
		return err
	}
	defer sock.close()
	target, err := credentialsTarget(cfg, os.Getpid())
	if err != nil {
		return err
	}
	code, err := reexec(target, reexecSpec{stage: stageCredentials, uid: -1, files: []*os.File{sock.file},
		env: []string{listenPIDEnv, listenFDsEnv, listenNamesEnv}})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("the server in its mount namespace exited with code %d", code)
	}
	return nil
}

// heldSocket is the first stage's listening socket: made by unixsock.Listen
// (removed again by close) or passed by systemd (systemd's to remove).
type heldSocket struct {
	file *os.File
	made *unixsock.Listener
}

func (h *heldSocket) close() {
	h.file.Close()
	if h.made != nil {
		h.made.Close()
	}
}

// credentialsListener makes the socket at path, or takes the one systemd
// passed when path is empty.
func credentialsListener(path string) (*heldSocket, error) {
	activated := os.Getenv(listenPIDEnv) == strconv.Itoa(os.Getpid())
	if path == "" {
		if !activated || os.Getenv(listenFDsEnv) != "1" {
			return nil, errors.New("no socket: give one, or start it from a systemd socket unit with one ListenStream=")
		}
		f := os.NewFile(3, "systemd socket")
		if err := checkListening(3); err != nil {
			f.Close()
			return nil, fmt.Errorf("the socket systemd passed: %w", err)
		}
		unix.CloseOnExec(3)
		return &heldSocket{file: f}, nil
	}
	if activated {
		return nil, errors.New("systemd passed a socket and a socket path is given too: use one")
	}
	p, err := unixsock.Parse(path)
	if err != nil {
		return nil, err
	}
	if err := socketDir(filepath.Dir(p)); err != nil {
		return nil, err
	}
	l, err := unixsock.Listen(p, 0o600)
	if err != nil {
		return nil, err
	}
	f, err := l.File() // a duplicate, for the second stage
	if err != nil {
		l.Close()
		return nil, err
	}
	return &heldSocket{file: f, made: l}, nil
}

// socketDir creates dir (0700, root) if it is missing; one that exists must
// be a directory (not a symlink) of root's that nobody else can write to,
// so nobody else can put a socket of theirs in the server's place. An
// existing directory's mode is left alone: other commands share
// /run/secretfs (secretfs run's targets, which their users traverse).
func socketDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("creating socket directory: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("creating socket directory: %w", err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating socket directory: %w", err)
		}
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("socket directory %s is not a directory", dir)
	case st == nil || st.Uid != 0:
		return fmt.Errorf("socket directory %s does not belong to root", dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("socket directory %s is writable by others (mode %04o)", dir, fi.Mode().Perm())
	}
	return nil
}

// checkListening checks that fd is a listening unix stream socket.
func checkListening(fd int) error {
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("descriptor %d is not a socket: %w", fd, err)
	}
	typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	acc, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if dom != unix.AF_UNIX || typ != unix.SOCK_STREAM || acc != 1 {
		return fmt.Errorf("descriptor %d is not a listening unix stream socket (ListenStream= with a path)", fd)
	}
	return nil
}

// credentialsIsolated is the second stage: mount, refresh, serve.
func credentialsIsolated(ctx context.Context, cfg CredentialsConfig) error {
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
	if err := checkListening(3); err != nil {
		return err
	}
	lf := os.NewFile(3, "credentials socket")
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return err
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return errors.New("descriptor 3 is not a unix socket listener")
	}
	defer ul.Close()
	target, err := credentialsTarget(cfg, os.Getppid())
	if err != nil {
		return err
	}
	if err := privateNamespace(target, log); err != nil {
		return err
	}
	var classes class.Source
	if cfg.ClassFile == "" && cfg.NewClasses != nil {
		if classes, err = cfg.NewClasses(ctx); err != nil {
			return err
		}
	}
	cls, classes, err := findClass(ctx, cfg.ClassFile, cfg.ClassName, classes, cfg.Namespace)
	if err != nil {
		return err
	}
	held, err := openTarget(target)
	if err != nil {
		return err
	}
	defer held.close()
	d, req, unpublish, err := mountHeld(ctx, held, target, volumeSpec{
		cls: cls, classes: classes, providers: cfg.Providers, tmpfsSize: cfg.TmpfsSize, interval: cfg.Interval,
		serviceAccount: cfg.ServiceAccount, token: cfg.Token, tokenAudience: cfg.TokenAudience, owner: driver.LocalOwner, log: log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	defer func() {
		if err := unpublish(); err != nil {
			log.Error("unmounting", "target", target, "error", err)
		}
	}()
	root, err := os.OpenRoot(fdPath(held.mount))
	if err != nil {
		return err
	}
	defer root.Close()
	for id := range cfg.Allow.Units {
		// A rule for a file the class does not have is most likely a typo:
		// say so once (the class may still gain it at a refresh).
		if _, err := root.Lstat(id); err != nil {
			log.Warn("an -allow rule names a credential the volume does not have (yet)", "id", id)
		}
	}
	log.Info("serving credentials", "class", cls.Name, "namespace", cls.Namespace, "refresh", cfg.Interval,
		"max_connections", cfg.Limits.MaxConnections, "max_open", cfg.Limits.MaxOpen, "timeout", cfg.Limits.Timeout)

	refreshed := make(chan struct{})
	rctx, stop := context.WithCancel(ctx)
	go func() {
		defer close(refreshed)
		republishLoop(rctx, d, req.VolumeId, cfg.Interval, func() {
			if _, err := d.NodePublishVolume(rctx, req); err != nil && rctx.Err() == nil {
				log.Warn("refresh failed; serving the last good files", "error", err)
			}
		})
	}()
	srv := newCredServer(root, cfg.Allow, cfg.Limits, log)
	err = srv.serve(ctx, ul)
	stop()
	<-refreshed
	return err
}

// republishLoop calls republish at the republish period of the volume's
// interval in force until ctx is done.
func republishLoop(ctx context.Context, d *driver.Driver, volumeID string, interval time.Duration, republish func()) {
	tick := newRepublisher(d, volumeID, interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		republish()
		tick.follow()
	}
}

// withoutVars is env without the variables named.
func withoutVars(env, names []string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
