package registration

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// shortDir returns a directory whose socket paths fit the 108-byte limit of
// unix socket addresses (t.TempDir can be longer).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "reg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startServer serves registration in dir and returns a kubelet-side client.
func startServer(t *testing.T, dir string) (*Server, registerapi.RegistrationClient, func() error) {
	t.Helper()
	s, err := NewServer("csi.secretfs.dev", "unix:///var/lib/kubelet/plugins/csi.secretfs.dev/csi.sock", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, dir) }()
	stop := sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("Serve did not return after cancel")
		}
	})
	t.Cleanup(func() { _ = stop() })

	sock := SocketPath(dir, "csi.secretfs.dev")
	// Accepting, not just there: a stale socket may be there first.
	waitFor(t, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return s, registerapi.NewRegistrationClient(conn), stop
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met within 5s")
}

func TestServeAnswersKubeletOverSocket(t *testing.T) {
	dir := shortDir(t)
	s, client, stop := startServer(t, dir)
	ctx := context.Background()

	info, err := client.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "csi.secretfs.dev" ||
		info.Endpoint != "/var/lib/kubelet/plugins/csi.secretfs.dev/csi.sock" ||
		!slices.Equal(info.SupportedVersions, []string{"1.0.0"}) {
		t.Fatalf("GetInfo = %+v", info)
	}

	if notified, _, _ := s.Status(); notified {
		t.Fatal("Status reports a verdict before kubelet sent one")
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version mismatch"}); err != nil {
		t.Fatalf("NotifyRegistrationStatus: %v", err)
	}
	if notified, registered, msg := s.Status(); !notified || registered || msg != "version mismatch" {
		t.Fatalf("Status after refusal = %v %v %q", notified, registered, msg)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatalf("NotifyRegistrationStatus: %v", err)
	}
	if notified, registered, msg := s.Status(); !notified || !registered || msg != "" {
		t.Fatalf("Status after success = %v %v %q", notified, registered, msg)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	// kubelet deregisters a plugin when its socket disappears.
	if _, err := os.Stat(SocketPath(dir, "csi.secretfs.dev")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still present after shutdown: %v", err)
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	dir := shortDir(t)
	// A driver that crashed leaves its socket behind.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: SocketPath(dir, "csi.secretfs.dev"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	_, client, _ := startServer(t, dir)
	if _, err := client.GetInfo(context.Background(), &registerapi.InfoRequest{}); err != nil {
		t.Fatalf("GetInfo after replacing a stale socket: %v", err)
	}
	// A live one (this very server) is not taken over.
	err = Serve(context.Background(), dir, "csi.secretfs.dev", "/csi/csi.sock", nil)
	if err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("second Serve on a live socket: %v", err)
	}
}

// What is not a socket is not ours to remove.
func TestServeRefusesNonSocket(t *testing.T) {
	dir := shortDir(t)
	if err := os.WriteFile(SocketPath(dir, "csi.secretfs.dev"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Serve(context.Background(), dir, "csi.secretfs.dev", "/csi/csi.sock", nil)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Serve over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(SocketPath(dir, "csi.secretfs.dev")); string(b) != "keep" {
		t.Fatal("regular file was touched")
	}
}

// kubelet is told the same absolute path for every endpoint form the
// driver's -endpoint accepts.
func TestEndpointForms(t *testing.T) {
	for _, endpoint := range []string{"unix:///csi/csi.sock", "unix:/csi/csi.sock", "/csi/csi.sock", "/csi/x/../csi.sock"} {
		s, err := NewServer("csi.secretfs.dev", endpoint, nil)
		if err != nil {
			t.Errorf("NewServer(%q): %v", endpoint, err)
			continue
		}
		info, err := s.GetInfo(context.Background(), &registerapi.InfoRequest{})
		if err != nil || info.Endpoint != "/csi/csi.sock" {
			t.Errorf("NewServer(%q): GetInfo endpoint %q, %v; want /csi/csi.sock", endpoint, info.GetEndpoint(), err)
		}
	}
}

func TestServeFailsOnMissingDirectory(t *testing.T) {
	dir := filepath.Join(shortDir(t), "missing")
	err := Serve(context.Background(), dir, "csi.secretfs.dev", "/csi/csi.sock", nil)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Serve in a missing directory: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Serve created kubelet's registration directory")
	}
}

func TestNewServerRejectsBadInput(t *testing.T) {
	for _, tc := range []struct{ name, driver, endpoint string }{
		{"empty driver", "", "/csi/csi.sock"},
		{"relative endpoint", "csi.secretfs.dev", "csi.sock"},
		{"host-style endpoint", "csi.secretfs.dev", "unix://csi/csi.sock"},
		{"tcp endpoint", "csi.secretfs.dev", "tcp://127.0.0.1:10000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewServer(tc.driver, tc.endpoint, nil); err == nil {
				t.Fatalf("NewServer(%q, %q) succeeded", tc.driver, tc.endpoint)
			}
		})
	}
}
