package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
)

// credHelperEnv makes the test binary act as `secretfs credentials` with the
// JSON credHelperConfig it holds (TestMain): the real two stages, the real
// socket, a tmpfs in a private mount namespace, the fake backend.
const credHelperEnv = "SECRETFS_AGENT_TEST_CREDENTIALS"

type credHelperConfig struct {
	ClassFile, DataDir, Socket string
	Interval                   time.Duration
	Allow                      []string
	Only                       bool
	Limits                     CredentialLimits
}

func credHelper(raw string) int {
	var hc credHelperConfig
	if err := json.Unmarshal([]byte(raw), &hc); err != nil {
		fmt.Fprintln(os.Stderr, "helper config:", err)
		return 1
	}
	rules := CredentialRules{Only: hc.Only}
	for _, a := range hc.Allow {
		if err := rules.Add(a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	backend := fake.New(fake.Options{DataDir: hc.DataDir})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := Credentials(ctx, CredentialsConfig{
		ClassFile: hc.ClassFile, Socket: hc.Socket, Interval: hc.Interval, Allow: rules, Limits: hc.Limits,
		Providers: func(string) (provider.Provider, error) { return backend, nil },
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "credentials failed:", err)
		return 1
	}
	return 0
}

const testCredClass = `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: creds
  namespace: team-a
spec:
  provider: fake
  parameters:
    objects: |
      - objectName: token
      - objectName: max
      - objectName: conf
        objectAlias: etc/app.conf
        value: "a=1"
    secretfs.dev/templates: |
      - path: big
        template: '{{ .max }}+'
`

// credEnv is one `secretfs credentials` under test.
type credEnv struct {
	t      *testing.T
	dir    string
	hc     credHelperConfig
	cmd    *exec.Cmd
	log    syncBuffer
	exited chan struct{}
}

func newCredEnv(t *testing.T, lim CredentialLimits, allow ...string) *credEnv {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	e := &credEnv{t: t, dir: dir, hc: credHelperConfig{
		ClassFile: filepath.Join(dir, "class.yaml"), DataDir: filepath.Join(dir, "data"),
		Socket: filepath.Join(dir, "run", "credentials.sock"), Interval: 40 * time.Millisecond, Allow: allow, Limits: lim,
	}}
	if err := os.MkdirAll(filepath.Join(e.hc.DataDir, "team-a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.hc.ClassFile, []byte(testCredClass), 0o644); err != nil {
		t.Fatal(err)
	}
	e.setObject("token", []byte("first"))
	e.setObject("max", bytes.Repeat([]byte("m"), CredentialSizeMax))
	return e
}

func (e *credEnv) setObject(name string, v []byte) {
	e.t.Helper()
	p := filepath.Join(e.hc.DataDir, "team-a", name)
	if err := os.WriteFile(p+".tmp", v, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		e.t.Fatal(err)
	}
}

func (e *credEnv) start() { e.startWith(nil) }

// startWith starts the server; with activated, as systemd's socket
// activation does: the socket at descriptor 3, LISTEN_FDS=1 and LISTEN_PID
// the server's pid (set by a shell that then execs the server).
func (e *credEnv) startWith(activated *os.File) {
	e.t.Helper()
	raw, err := json.Marshal(e.hc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cmd = exec.Command(os.Args[0], "-test.run=^$")
	if activated != nil {
		e.cmd = exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, os.Args[0], "-test.run=^$")
		e.cmd.ExtraFiles = []*os.File{activated}
	}
	e.cmd.Env = append(os.Environ(), credHelperEnv+"="+string(raw))
	e.cmd.Stdout, e.cmd.Stderr = &e.log, &e.log
	if err := e.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.exited = make(chan struct{})
	go func() { _ = e.cmd.Wait(); close(e.exited) }()
	e.t.Cleanup(func() {
		_ = e.cmd.Process.Kill()
		<-e.exited
		if e.t.Failed() {
			e.t.Logf("secretfs credentials log:\n%s", e.log.String())
		}
	})
	e.waitFor("the server to serve", func() bool { return strings.Contains(e.log.String(), "serving credentials") })
}

func (e *credEnv) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case <-e.exited:
			e.t.Fatalf("the server exited while waiting for %s; log:\n%s", what, e.log.String())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; log:\n%s", what, e.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *credEnv) logCount(s string) int { return strings.Count(e.log.String(), s) }

// stop sends SIGTERM, as systemd stops a unit, and waits for the exit.
func (e *credEnv) stop() {
	e.t.Helper()
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		e.t.Fatal(err)
	}
	select {
	case <-e.exited:
	case <-time.After(60 * time.Second):
		e.t.Fatalf("the server did not stop; log:\n%s", e.log.String())
	}
	if code := e.cmd.ProcessState.ExitCode(); code != 0 {
		e.t.Fatalf("exit code %d; log:\n%s", code, e.log.String())
	}
}

// systemdConnect is systemd's side of LoadCredential=ID:socket, as its
// read_full_file_full(READ_FULL_FILE_CONNECT_SOCKET) does it: a stream
// socket bound to the abstract address "\0<random hex>/unit/<unit>/<id>",
// connected to the socket, its sending side shut down. It returns the
// descriptor to read from.
func systemdConnect(t *testing.T, socket, unit, id string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	// x/sys/unix writes a leading '@' as the NUL of an abstract address,
	// with no terminating NUL: systemd's sockaddr_un_set_path.
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@" + hex.EncodeToString(rnd[:]) + "/unit/" + unit + "/" + id}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: socket}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	return fd
}

// readToEOF reads fd until EOF, as systemd does.
func readToEOF(t *testing.T, fd int) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("reading the credential: %v", err)
		}
		if n == 0 {
			return out
		}
		out = append(out, buf[:n]...)
	}
}

func loadCredential(t *testing.T, socket, unit, id string) []byte {
	t.Helper()
	return readToEOF(t, systemdConnect(t, socket, unit, id))
}

// The credential a unit is allowed gets through; a unit not allowed, an
// unknown ID, a directory and a file over systemd's 1 MiB get nothing, each
// with a log line naming unit and ID; a change of the content is served at
// the next connection; the mount is never in the host's mount table; SIGTERM
// removes socket and mount point.
func TestCredentialsServe(t *testing.T) {
	e := newCredEnv(t, DefaultCredentialLimits, "token=app.service,web@*.service")
	e.start()
	sock := e.hc.Socket
	for path, want := range map[string]os.FileMode{sock: os.ModeSocket | 0o600, filepath.Dir(sock): os.ModeDir | 0o700} {
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode() != want {
			t.Fatalf("%s: mode %v (%v), want %v", path, fi.Mode(), err, want)
		}
	}
	if got := string(loadCredential(t, sock, "app.service", "token")); got != "first" {
		t.Fatalf("app.service got %q, want the token", got)
	}
	if got := string(loadCredential(t, sock, "web@2.service", "token")); got != "first" {
		t.Fatalf("web@2.service (a pattern) got %q, want the token", got)
	}
	if got := loadCredential(t, sock, "max.service", "max"); len(got) != CredentialSizeMax {
		t.Fatalf("a credential of exactly 1 MiB: got %d bytes", len(got))
	}
	refused := []struct{ unit, id, reason string }{
		{"other.service", "token", "not allowed"},
		{"app.service", "nope", "no file of that name"},
		{"app.service", "etc", "not a regular file"},
		{"app.service", "big", "larger than the credential size cap"},
	}
	for _, r := range refused {
		if got := loadCredential(t, sock, r.unit, r.id); len(got) != 0 {
			t.Fatalf("%s got %d bytes of %s, want none", r.unit, len(got), r.id)
		}
		line := fmt.Sprintf("credential refused\" unit=%s id=%s reason=", r.unit, r.id)
		e.waitFor("the log line of "+r.unit+"/"+r.id, func() bool { return e.logCount(line) == 1 })
		if l := grepLines([]byte(e.log.String()), line); !strings.Contains(l, r.reason) {
			t.Fatalf("log line %q does not say %q", l, r.reason)
		}
	}
	// A client that is not systemd: no address of its own.
	plain, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(plain); err != nil || len(b) != 0 {
		t.Fatalf("a client without an address got %d bytes (%v)", len(b), err)
	}
	plain.Close()
	e.waitFor("the log line of the plain client", func() bool { return e.logCount("the peer address is not systemd's") == 1 })
	if e.logCount("an -allow rule names a credential the volume does not have") != 0 {
		t.Fatal("a warning for an -allow rule of a file the volume has")
	}
	if strings.Contains(e.log.String(), "first") || strings.Contains(e.log.String(), "mmmm") {
		t.Fatal("a credential value is in the log")
	}
	e.waitFor("three credentials served", func() bool { return e.logCount("credential served") == 3 })

	e.setObject("token", []byte("second"))
	e.waitFor("the new token", func() bool { return string(loadCredential(t, sock, "app.service", "token")) == "second" })

	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(info, []byte(filepath.Dir(sock))) {
		t.Fatalf("the host's mount table shows the server's tmpfs:\n%s", grepLines(info, filepath.Dir(sock)))
	}
	e.stop()
	entries, err := os.ReadDir(filepath.Dir(sock))
	if err != nil || len(entries) != 0 {
		t.Fatalf("left behind in the socket directory: %v (%v)", entries, err)
	}
}

// Bounds: a reader that does not read is cut off at the timeout; with one
// credential sent at a time and two connections held, a third connection is
// closed at once while the second waits its turn and is served when the
// first goes.
func TestCredentialsBounds(t *testing.T) {
	e := newCredEnv(t, CredentialLimits{MaxConnections: 1, MaxOpen: 2, Timeout: 2 * time.Second, MaxSize: CredentialSizeMax})
	e.start()
	sock := e.hc.Socket

	// A slow reader: 1 MiB does not fit the socket's buffers.
	slow := systemdConnect(t, sock, "slow.service", "max")
	e.waitFor("the write deadline", func() bool { return e.logCount("credential cut short") == 1 })
	if got := readToEOF(t, slow); len(got) >= CredentialSizeMax {
		t.Fatalf("the slow reader got %d bytes after the deadline, want fewer than the credential", len(got))
	}

	holder := systemdConnect(t, sock, "holder.service", "max")
	var one [1]byte
	if n, err := unix.Read(holder, one[:]); n != 1 || err != nil {
		t.Fatalf("the first connection got no data: %d, %v", n, err)
	}
	// holder has the only turn; waiting is queued behind it, extra is one
	// connection too many.
	waiting := systemdConnect(t, sock, "waiting.service", "token")
	extra := systemdConnect(t, sock, "extra.service", "token")
	if got := readToEOF(t, extra); len(got) != 0 {
		t.Fatalf("the connection over the limit got %q", got)
	}
	e.waitFor("the refusal", func() bool { return e.logCount("too many open connections") == 1 })
	unix.Close(holder)
	if got := string(readToEOF(t, waiting)); got != "first" {
		t.Fatalf("the waiting connection got %q, want the token", got)
	}
	e.waitFor("the log of the closed reader", func() bool { return e.logCount("credential not sent\" unit=holder.service") == 1 })
	// The log reaches this process through a pipe, after the client's EOF.
	e.waitFor("one credential served (the waiting one)", func() bool { return e.logCount("credential served") == 1 })
	e.stop()
}

// Socket activation: the server serves the socket systemd passes, and leaves
// it to systemd at exit.
func TestCredentialsSocketActivation(t *testing.T) {
	e := newCredEnv(t, DefaultCredentialLimits, "tokn=app.service")
	sock := e.hc.Socket
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	e.hc.Socket = ""
	e.startWith(f)
	f.Close()
	if got := string(loadCredential(t, sock, "app.service", "token")); got != "first" {
		t.Fatalf("got %q, want the token", got)
	}
	if n := e.logCount("an -allow rule names a credential the volume does not have (yet)\" id=tokn"); n != 1 {
		t.Fatalf("%d warnings for the rule of a file the volume lacks, want 1", n)
	}
	e.stop()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the activated socket is gone: %v", err)
	}
}

// The socket path must be a socket to be replaced, and its directory
// root's alone.
func TestCredentialsSocketPathRefused(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg := CredentialsConfig{ClassFile: filepath.Join(dir, "class.yaml"), Limits: DefaultCredentialLimits}
	for sock, want := range map[string]string{file: "not a socket", filepath.Join(open, "c.sock"): "writable by others"} {
		cfg.Socket = sock
		if err := Credentials(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("socket %s: %v, want %q", sock, err, want)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep" {
		t.Fatalf("the file at the socket path was touched: %q %v", b, err)
	}
}

// The attacker the socket keeps out: a local process of another user. It
// may not reach the socket (its directory is root's, 0700) nor connect to
// it where it can reach it (the socket is 0600), so it can neither take a
// credential under a unit name it binds nor hold connections to starve
// systemd's; the same process connects once the socket lets it, so the
// refusals are the modes', not the test's.
func TestCredentialsSocketRefusesOtherUsers(t *testing.T) {
	e := newCredEnv(t, DefaultCredentialLimits)
	e.start()
	sock := e.hc.Socket
	for _, d := range []string{filepath.Dir(e.dir), e.dir} {
		if err := os.Chmod(d, 0o711); err != nil { // reachable by anyone up to the server's directory
			t.Fatal(err)
		}
	}
	if err := connectAs(65534, sock); !errors.Is(err, unix.EACCES) {
		t.Fatalf("another user connecting through the 0700 directory: %v, want EACCES", err)
	}
	if err := os.Chmod(filepath.Dir(sock), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := connectAs(65534, sock); !errors.Is(err, unix.EACCES) {
		t.Fatalf("another user connecting to the 0600 socket: %v, want EACCES", err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := connectAs(65534, sock); err != nil {
		t.Fatalf("the same user to a socket open to all: %v (the refusals above must be the modes')", err)
	}
}

// connectAs connects to socket as uid (on a thread of its own that changes
// only its own credentials and is discarded after) and closes.
func connectAs(uid int, socket string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		// The raw system call changes this thread only (syscall.Setresuid
		// would change every thread of the process).
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 { // no supplementary group of root's
			errc <- fmt.Errorf("setgroups: %w", e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			errc <- fmt.Errorf("setresgid: %w", e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			errc <- fmt.Errorf("setresuid: %w", e)
			return
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		errc <- unix.Connect(fd, &unix.SockaddrUnix{Name: socket})
	}()
	return <-errc
}
