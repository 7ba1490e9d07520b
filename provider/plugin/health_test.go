package plugin

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHealth follows two providers over their sockets: one keeps
// answering, one stops. The one that stops is reported (report, metric,
// log) and comes back when it answers again; the other is unaffected.
func TestHealth(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	serve(t, sockPath(dir, "good"), staticProvider(), WithRuntime("good-provider", "1.0.0"))
	stopBad := serve(t, sockPath(other, "bad"), staticProvider(), WithRuntime("bad-provider", "2.0.0"))
	// Not provider sockets: a regular file and an invalid name.
	os.WriteFile(filepath.Join(dir, "notes.sock"), nil, 0o600)
	serve(t, filepath.Join(dir, "..bad.sock"), staticProvider())

	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	c := New(Options{SocketDirs: []string{dir, other}})
	defer c.Close()
	h, err := c.Health(HealthOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	h.Check(ctx)
	ps := h.Providers()
	if len(ps) != 2 || ps[0].Name != "bad" || !ps[0].Healthy || ps[1].Name != "good" || !ps[1].Healthy {
		t.Fatalf("after the first round: %+v", ps)
	}
	if ps[1].Version.RuntimeName != "good-provider" || ps[1].Version.RuntimeVersion != "1.0.0" {
		t.Errorf("version %+v", ps[1].Version)
	}
	report := func() string { var b bytes.Buffer; h.WriteHealth(&b); return b.String() }
	if got, want := report(), "provider bad: ok (bad-provider 2.0.0)\nprovider good: ok (good-provider 1.0.0)\n"; got != want {
		t.Errorf("report %q, want %q", got, want)
	}

	stopBad() // the provider goes away, and its socket with it
	h.Check(ctx)
	h.Check(ctx)
	ps = h.Providers()
	if len(ps) != 2 || ps[0].Healthy || !ps[1].Healthy {
		t.Fatalf("after the provider stopped: %+v", ps)
	}
	if !strings.Contains(ps[0].Err, "bad.sock") {
		t.Errorf("reason does not name the socket: %q", ps[0].Err)
	}
	if r := report(); !strings.Contains(r, "provider bad: unhealthy since ") || !strings.Contains(r, "provider good: ok") {
		t.Errorf("report %q", r)
	}
	if v := testutil.ToFloat64(h.healthy.WithLabelValues("bad")); v != 0 {
		t.Errorf("secretfs_provider_healthy{provider=bad} = %v, want 0", v)
	}
	if v := testutil.ToFloat64(h.healthy.WithLabelValues("good")); v != 1 {
		t.Errorf("secretfs_provider_healthy{provider=good} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(h.checks.WithLabelValues("bad", "failed")); v != 2 {
		t.Errorf("failed checks of bad = %v, want 2", v)
	}
	if n := strings.Count(logs.String(), "external provider is unhealthy"); n != 1 {
		t.Errorf("unhealthy logged %d times, want once per change:\n%s", n, logs.String())
	}

	serve(t, sockPath(other, "bad"), staticProvider(), WithRuntime("bad-provider", "2.0.1"))
	h.Check(ctx)
	if ps = h.Providers(); !ps[0].Healthy || ps[0].Version.RuntimeVersion != "2.0.1" {
		t.Errorf("after the provider came back: %+v", ps[0])
	}
	if n := strings.Count(logs.String(), "external provider is healthy"); n != 3 {
		t.Errorf("healthy logged %d times, want 3 (two first checks, one recovery):\n%s", n, logs.String())
	}
	if h.Rounds() != 4 {
		t.Errorf("rounds %d, want 4", h.Rounds())
	}
	if n, err := testutil.GatherAndCount(reg, "secretfs_provider_healthy"); err != nil || n != 2 {
		t.Errorf("registered healthy series: %d, %v", n, err)
	}
}

// TestHealthBounded follows at most maxTrackedProviders sockets.
func TestHealthBounded(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < maxTrackedProviders+3; i++ {
		serve(t, sockPath(dir, "p"+string(rune('a'+i/26))+string(rune('a'+i%26))), staticProvider())
	}
	c := New(Options{SocketDirs: []string{dir}})
	defer c.Close()
	var logs bytes.Buffer
	h, _ := c.Health(HealthOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	h.Check(context.Background())
	h.Check(context.Background())
	if n := len(h.Providers()); n != maxTrackedProviders {
		t.Errorf("following %d providers, want %d", n, maxTrackedProviders)
	}
	if n := strings.Count(logs.String(), "not checked"); n != 1 {
		t.Errorf("overflow logged %d times, want 1", n)
	}
}
