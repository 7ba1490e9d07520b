package unixsock

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///run/csi/csi.sock": "/run/csi/csi.sock",
		"unix:/run/csi/csi.sock":   "/run/csi/csi.sock",
		"/run/csi/csi.sock":        "/run/csi/csi.sock",
		"/run/x/../csi//csi.sock":  "/run/csi/csi.sock",
		"unix:///run/csi/":         "/run/csi",
	} {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"":                                      "endpoint is empty",
		"unix://":                               "absolute path after unix://",
		"unix:":                                 "no socket path",
		"unix://csi/csi.sock":                   "three slashes",
		"unix:csi.sock":                         "must be absolute",
		"csi.sock":                              "must be absolute",
		"./csi.sock":                            "must be absolute",
		"/":                                     "no socket file name",
		"unix:///a\x00b":                        "NUL",
		"tcp://127.0.0.1:10000":                 `scheme "tcp" is not supported`,
		"dns:///localhost:1":                    `scheme "dns" is not supported`,
		"unix-abstract:csi":                     `scheme "unix-abstract" is not supported`,
		"UNIX:///csi.sock":                      `scheme "UNIX" is not supported`,
		"/" + strings.Repeat("a", MaxPathBytes): "at most 107",
	} {
		_, err := Parse(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%.40q): want error containing %q, got %v", in, want, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"unix:///run/csi.sock", "unix:/run/csi.sock", "/run/csi.sock", "unix://rel", "tcp://127.0.0.1:1",
		"unix:", "/a/../../b", "c:/x", "/", "unix:///"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := Parse(in)
		if err != nil {
			return
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" || len(p) > MaxPathBytes || strings.IndexByte(p, 0) >= 0 {
			t.Fatalf("Parse(%q) = %q", in, p)
		}
		// Every accepted form names the same socket as its plain path.
		for _, form := range []string{p, "unix://" + p, "unix:" + p} {
			if q, err := Parse(form); err != nil || q != p {
				t.Fatalf("Parse(%q) = %q, %v; want %q", form, q, err, p)
			}
		}
	})
}

// staleSocket leaves a socket file nobody listens on, as a crashed server does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

func TestListen(t *testing.T) {
	old := syscall.Umask(0) // the mode must not depend on it
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "x.sock")

	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want a socket with mode 0600", fi, err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("socket directory %v, %v; want mode 0750", fi, err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Fatalf("socket directory holds %v; want only the socket", entries)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dialling the socket: %v", err)
	}
	c.Close()

	// A live socket is not taken over.
	if _, err := Listen(path, 0o600); err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("Listen on a live socket: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}

	// A stale socket is replaced.
	staleSocket(t, path)
	l, err = Listen(path, 0o660)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v, want 0660", fi.Mode().Perm())
	}
	// A newer server's socket survives this one's Close.
	os.Remove(path)
	staleSocket(t, path)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("Close removed a socket that was not its own: %v", err)
	}

	// Not a socket: refused and left alone.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := Listen(file, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("regular file was touched")
	}
}

// A path whose private detour would not fit a socket address still works.
func TestListenLongPath(t *testing.T) {
	base, err := os.MkdirTemp("", "us")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	dir := filepath.Join(base, strings.Repeat("d", MaxPathBytes-len(base)-len("/x.sock")-1))
	path := filepath.Join(dir, "x.sock")
	if len(path) != MaxPathBytes {
		t.Fatalf("test path is %d bytes", len(path))
	}
	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v", fi, err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// Serve stops gracefully, and cuts off a call that outlives the grace period.
func TestServeGraceDeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.sock")
	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, srv, l, 50*time.Millisecond) }()

	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Watch never ends on its own: only the deadline can stop it.
	stream, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve after stop: %v", err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("call in flight after the deadline: %v, want Unavailable", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Serve: %v", err)
	}
}
