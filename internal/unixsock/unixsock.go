// Package unixsock is where secretfs parses, creates and serves every unix
// socket it offers: the CSI socket kubelet calls, the provider-protocol
// socket of `secretfs provider`, and kubelet's plugin-registration socket.
// One parser gives every flag the same answer, and one Listen gives every
// socket the same safe creation:
//
//  1. refuse a file at the path that is not a socket, and a socket another
//     process still accepts connections on (a socket nobody answers on is
//     stale: the server that made it died);
//  2. bind in a fresh private (0700) directory next to the path, so the new
//     socket is never reachable by anyone while it has the umask's mode;
//  3. chmod it to the wanted mode;
//  4. rename it over the path, which replaces a stale socket atomically;
//  5. on Close, remove the path only if it is still the socket made in 2
//     (a server started since then keeps its own).
package unixsock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

// MaxPathBytes is the longest socket path the kernel accepts in a
// sockaddr_un (108 bytes with the terminating NUL).
const MaxPathBytes = len(syscall.RawSockaddrUnix{}.Path) - 1

// Parse returns the socket path of endpoint, cleaned. Accepted forms, the
// same for every socket secretfs serves or announces:
//
//	unix:///abs/path.sock
//	unix:/abs/path.sock
//	/abs/path.sock
//
// The path must be absolute (it is often told to another process, kubelet,
// for which a relative path means nothing) and fit a socket address. Any
// other scheme is refused with a message that names it.
func Parse(endpoint string) (string, error) {
	p := endpoint
	switch {
	case strings.HasPrefix(endpoint, "/"):
	case strings.HasPrefix(endpoint, "unix://"):
		p = endpoint[len("unix://"):]
		if !strings.HasPrefix(p, "/") {
			return "", fmt.Errorf("endpoint %q: a unix endpoint needs an absolute path after unix:// (unix:///path/to/name.sock, three slashes)", endpoint)
		}
	case strings.HasPrefix(endpoint, "unix:"):
		p = endpoint[len("unix:"):]
	case endpoint == "":
		return "", errors.New("endpoint is empty: want a unix socket such as unix:///path/to/name.sock")
	default:
		if scheme, ok := schemeOf(endpoint); ok {
			return "", fmt.Errorf("endpoint %q: scheme %q is not supported; secretfs serves only unix sockets (unix:///path/to/name.sock)", endpoint, scheme)
		}
	}
	if p == "" {
		return "", fmt.Errorf("endpoint %q has no socket path (want unix:///path/to/name.sock)", endpoint)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("endpoint %q: the socket path contains a NUL byte", endpoint)
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("endpoint %q: the socket path must be absolute (unix:///path/to/name.sock)", endpoint)
	}
	p = filepath.Clean(p)
	if p == "/" {
		return "", fmt.Errorf("endpoint %q has no socket file name", endpoint)
	}
	if len(p) > MaxPathBytes {
		return "", fmt.Errorf("endpoint %q: the socket path is %d bytes long; a unix socket address holds at most %d", endpoint, len(p), MaxPathBytes)
	}
	return p, nil
}

// schemeOf reports the URL scheme s starts with (RFC 3986: a letter, then
// letters, digits, '+', '-', '.', then ':').
func schemeOf(s string) (string, bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return "", false
	}
	for j, c := range s[:i] {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (j == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return "", false
		}
	}
	return s[:i], true
}

// Listener is a unix socket listener made by Listen. Closing it removes
// its socket file, unless another server has replaced the file meanwhile.
type Listener struct {
	*net.UnixListener
	path   string
	id     fileID
	remove sync.Once
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket file if it is still ours.
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	l.remove.Do(func() {
		if cur, statErr := statID(l.path); statErr == nil && cur == l.id {
			os.Remove(l.path)
		}
	})
	return err
}

// fileID identifies a socket file across renames.
type fileID struct{ dev, ino uint64 }

// Listen listens on the unix socket path (see Parse) with file mode mode,
// following the steps in the package comment. The parent directory is
// created (0750) if missing.
func Listen(path string, mode fs.FileMode) (*Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	// 1. Refuse what is not a stale socket.
	if err := checkReplaceable(path); err != nil {
		return nil, err
	}
	// 2. Bind inside a private directory.
	tmpDir, err := os.MkdirTemp(dir, ".sock")
	if err != nil {
		return nil, fmt.Errorf("creating socket %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	bindAt := tmp
	if len(bindAt) > MaxPathBytes {
		// The detour is longer than a socket address can be: reach the
		// same private directory through a descriptor instead.
		d, err := os.Open(tmpDir)
		if err != nil {
			return nil, fmt.Errorf("creating socket %s: %w", path, err)
		}
		defer d.Close()
		bindAt = "/proc/self/fd/" + strconv.Itoa(int(d.Fd())) + "/s"
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: bindAt, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false) // removed by name in Close, and only if still ours
	fail := func(err error) (*Listener, error) {
		ul.Close()
		return nil, err
	}
	// 3. Its final mode, while nobody can reach it.
	if err := os.Chmod(tmp, mode.Perm()); err != nil {
		return fail(fmt.Errorf("setting the mode of socket %s: %w", path, err))
	}
	id, err := statID(tmp)
	if err != nil {
		return fail(err)
	}
	// 4. Into place, over a stale socket if there is one.
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("placing socket at %s: %w", path, err))
	}
	return &Listener{UnixListener: ul, path: path, id: id}, nil
}

// checkReplaceable accepts a missing path or a stale socket.
func checkReplaceable(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking socket path: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another process is serving on it", path)
	}
	return nil
}

func statID(path string) (fileID, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return fileID{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, errors.New("no inode information for " + path)
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// Serve serves srv on l until ctx is done, then stops gracefully: calls in
// flight get up to grace to finish and are then cut off (callers retry).
// It returns nil after a stop, or the error that ended serving early. The
// listener (and with it the socket file) is closed either way.
func Serve(ctx context.Context, srv *grpc.Server, l *Listener, grace time.Duration) error {
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		l.Close()
		return fmt.Errorf("serving %s: %w", l.path, err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		srv.Stop()
		<-stopped
	}
	<-served
	l.Close() // grpc has closed it; this removes the socket file
	return nil
}
