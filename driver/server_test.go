package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/provider"
)

func TestIdentityAndHealth(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	info, err := e.identity.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.Name != DefaultDriverName || info.VendorVersion != Version {
		t.Fatalf("plugin info %v %v", info, err)
	}
	caps, err := e.identity.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil || len(caps.Capabilities) != 0 {
		t.Fatalf("plugin capabilities %v %v", caps, err)
	}
	ncaps, err := e.node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil || len(ncaps.Capabilities) != 1 || ncaps.Capabilities[0].GetRpc().GetType() != csi.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP {
		t.Fatalf("node capabilities %v %v", ncaps, err)
	}
	ni, err := e.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || ni.NodeId != "node-1" {
		t.Fatalf("node info %v %v", ni, err)
	}
	for _, call := range []func() error{
		func() error { _, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{}); return err },
		func() error { _, err := e.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{}); return err },
	} {
		if status.Code(call()) != codes.Unimplemented {
			t.Fatal("unadvertised RPC implemented")
		}
	}
	probe, err := e.identity.Probe(ctx, &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("probe %v %v", probe, err)
	}
	health := func() int {
		rec := httptest.NewRecorder()
		e.d.HealthHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	if health() != http.StatusOK {
		t.Fatal("not healthy while serving")
	}
	e.stop()
	if health() != http.StatusServiceUnavailable {
		t.Fatal("healthy after stop")
	}
	if _, err := os.Stat(e.sock); !os.IsNotExist(err) {
		t.Fatal("socket left behind")
	}
	d, _ := New(Config{NodeID: "n", Classes: mapClasses{}, Providers: func(string) (provider.Provider, error) { return nil, nil }})
	rec := httptest.NewRecorder()
	d.HealthHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatal("healthy before Serve")
	}
}

func TestServeSocketHandling(t *testing.T) {
	needRoot(t)
	dir, _ := os.MkdirTemp("", "sfs")
	defer os.RemoveAll(dir)
	d, err := New(Config{NodeID: "n", Classes: mapClasses{}, Providers: func(string) (provider.Provider, error) { return nil, nil }, RecoverUnder: dir})
	if err != nil {
		t.Fatal(err)
	}
	// A stale socket (its server died without removing it) is replaced.
	sock := filepath.Join(dir, "sub", "csi.sock")
	os.MkdirAll(filepath.Dir(sock), 0o750)
	l, _ := net.Listen("unix", sock)
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- d.Serve(ctx, sock) }()
	waitFor(t, "serving", d.ready)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
	// A live socket is not stolen.
	d2, _ := New(Config{NodeID: "n", Classes: mapClasses{}, Providers: d.resolve, RecoverUnder: dir})
	if err := d2.Serve(context.Background(), "unix://"+sock); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second Serve: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Not a socket: refused.
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o600)
	if err := d.Serve(context.Background(), plain); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("plain file: %v", err)
	}
	if err := d.Serve(context.Background(), "tcp://127.0.0.1:1"); err == nil {
		t.Fatal("tcp endpoint accepted")
	}
}

// Every endpoint form kubelet and the manifests use serves the same socket;
// any other form is refused before anything is created.
func TestServeEndpointForms(t *testing.T) {
	needRoot(t)
	dir, _ := os.MkdirTemp("", "sfs")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "csi.sock")
	for _, endpoint := range []string{"unix://" + sock, "unix:" + sock, sock, filepath.Join(dir, "x", "..", "csi.sock")} {
		d, err := New(Config{NodeID: "n", Classes: mapClasses{}, Providers: func(string) (provider.Provider, error) { return nil, nil }, RecoverUnder: dir})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Serve(ctx, endpoint) }()
		waitFor(t, "serving", d.ready)
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := csi.NewIdentityClient(conn).GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{}); err != nil {
			t.Errorf("Serve(%q): GetPluginInfo on %s: %v", endpoint, sock, err)
		}
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for endpoint, want := range map[string]string{
		"":                      "empty",
		"unix://":               "absolute path",
		"unix://csi/csi.sock":   "three slashes",
		"csi.sock":              "must be absolute",
		"tcp://127.0.0.1:10000": `scheme "tcp" is not supported`,
	} {
		d, _ := New(Config{NodeID: "n", Classes: mapClasses{}, Providers: func(string) (provider.Provider, error) { return nil, nil }, RecoverUnder: dir})
		if err := d.Serve(context.Background(), endpoint); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Serve(%q): %v, want an error containing %q", endpoint, err, want)
		}
	}
}

// Nothing secret ever reaches the logs or the metrics: file contents,
// tokens, nodePublishSecretRef data, even when things fail.
func TestNoSecretsInLogsOrMetrics(t *testing.T) {
	const secret, token, pubSecret = "S3CRET-VALUE-4242", "TOKEN-eyJhbGciOi-9999", "CLIENT-SECRET-7777"
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = time.Millisecond, clock.Now })
	e.prov.set(func(p *testProvider) {
		p.files = func(*provider.Request) []provider.File {
			return []provider.File{{Path: "db", Contents: []byte(secret)}}
		}
	})
	target := e.target("vol")
	req := publishReq("vol-1", target, "app", "team-a")
	req.VolumeContext[provider.AttrTokens] = fmt.Sprintf(`{"vault":{"token":%q,"expirationTimestamp":"2030-01-01T00:00:00Z"}}`, token)
	req.Secrets = map[string]string{"clientsecret": pubSecret}
	ctx := context.Background()
	if _, err := e.node.NodePublishVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	if readFile(t, filepath.Join(target, "db")) != secret {
		t.Fatal("secret not mounted")
	}
	clock.Advance(2 * time.Millisecond)
	e.prov.set(func(p *testProvider) { p.err = provider.Unavailable("backend down") })
	if _, err := e.node.NodePublishVolume(ctx, req); err != nil { // failing refresh
		t.Fatal(err)
	}
	bad := publishReq("vol-2", e.target("v2"), "app", "team-a")
	bad.VolumeContext[provider.AttrTokens] = fmt.Sprintf(`{"vault":{"token":%q,"expirationTimestamp":"not-a-time"}}`, token)
	_, err := e.node.NodePublishVolume(ctx, bad)
	if status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), token) {
		t.Fatalf("bad token attribute: %v", err)
	}
	bad.VolumeContext[provider.AttrTokens] = `{"vault":{"token":"` + token + `",}`
	if _, err := e.node.NodePublishVolume(ctx, bad); err == nil || strings.Contains(err.Error(), token) {
		t.Fatalf("malformed token JSON: %v", err)
	}
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "volume published") || !strings.Contains(logs, "refresh failed") {
		t.Fatalf("expected log lines missing:\n%s", logs)
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	metrics := rec.Body.String()
	for _, s := range []string{secret, token, pubSecret} {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q:\n%s", s, logs)
		}
		if strings.Contains(string(metrics), s) {
			t.Errorf("metrics contain %q", s)
		}
	}
	for _, s := range []string{"web-0", "team-a", `"app"`, "vol-1"} {
		if strings.Contains(string(metrics), s) {
			t.Errorf("metrics name a pod, namespace, class or volume: %q", s)
		}
	}
	for _, name := range []string{"secretfs_node_operations_total", "secretfs_node_operation_duration_seconds_bucket",
		"secretfs_volumes_mounted", "secretfs_volume_refreshes_total", "secretfs_provider_fetches_total",
		"secretfs_cache_requests_total", "secretfs_cache_entries"} {
		if !strings.Contains(string(metrics), name) {
			t.Errorf("metric %s missing", name)
		}
	}
}

func TestToStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{provider.NotFound("x missing"), codes.NotFound, "x missing"},
		{fmt.Errorf("%w: more", provider.PermissionDenied("denied")), codes.PermissionDenied, "denied: more"},
		{status.Error(codes.Aborted, "busy"), codes.Aborted, "busy"},
		{context.DeadlineExceeded, codes.DeadlineExceeded, "deadline"},
		{errors.New("boom"), codes.Internal, "boom"},
	} {
		st := status.Convert(toStatus(tc.err))
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) || strings.Contains(st.Message(), "rpc error") {
			t.Errorf("%v: got %v %q", tc.err, st.Code(), st.Message())
		}
	}
	if toStatus(nil) != nil {
		t.Fatal("nil error became a status")
	}
	v := &volume{class: "app"}
	if c := status.Code(writeError(v, fmt.Errorf("writing: %w", unix.ENOSPC))); c != codes.ResourceExhausted {
		t.Fatalf("ENOSPC -> %v", c)
	}
	if c := status.Code(writeError(v, errors.New("io"))); c != codes.Internal {
		t.Fatalf("other write error -> %v", c)
	}
}
