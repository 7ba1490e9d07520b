package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/internal/kube/restart"
)

// TestDriverConfigFromFlags: each flag of `secretfs driver` lands in the
// driver.Config field it names, and the defaults are the driver's.
func TestDriverConfigFromFlags(t *testing.T) {
	defaults := driver.Config{
		DriverName: driver.DefaultDriverName, NodeID: "n1", TmpfsSize: driver.DefaultTmpfsSize,
		RotationInterval: driver.DefaultRotationInterval, MinRotationInterval: driver.DefaultMinRotationInterval,
		MaxRotationInterval: driver.DefaultMaxRotationInterval, MaxStaleIfError: driver.DefaultMaxStaleIfError,
		RecoverUnder: "/var/lib/kubelet", MaxFiles: driver.DefaultMaxFiles, MaxDirs: driver.DefaultMaxDirs,
		MaxDepth: driver.DefaultMaxDepth, MaxSteps: budget.DefaultMaxSteps,
	}
	for _, tc := range []struct {
		name string
		args []string
		set  func(c *driver.Config)
	}{
		{"defaults", nil, func(*driver.Config) {}},
		{"driver name", []string{"-driver-name", "csi.example.com"}, func(c *driver.Config) { c.DriverName = "csi.example.com" }},
		{"tmpfs size", []string{"-tmpfs-size", "1Mi"}, func(c *driver.Config) { c.TmpfsSize = 1 << 20 }},
		{"rotation", []string{"-rotation-interval", "30s", "-min-rotation-interval", "5s", "-max-rotation-interval", "1h"}, func(c *driver.Config) {
			c.RotationInterval, c.MinRotationInterval, c.MaxRotationInterval = 30*time.Second, 5*time.Second, time.Hour
		}},
		{"stale off", []string{"-max-stale-if-error", "0"}, func(c *driver.Config) { c.MaxStaleIfError = -1 }},
		{"stale 10m", []string{"-max-stale-if-error", "10m"}, func(c *driver.Config) { c.MaxStaleIfError = 10 * time.Minute }},
		{"kubelet dir", []string{"-kubelet-dir", "/data/kubelet"}, func(c *driver.Config) { c.RecoverUnder = "/data/kubelet" }},
		{"limits", []string{"-max-files", "7", "-max-dirs", "8", "-max-depth", "9", "-max-steps", "10"}, func(c *driver.Config) {
			c.MaxFiles, c.MaxDirs, c.MaxDepth, c.MaxSteps = 7, 8, 9, 10
		}},
		{"cache off", []string{"-cache=false"}, func(c *driver.Config) { c.DisableCache = true }},
		{"cache external", []string{"-cache-external", " vault, aws ,,"}, func(c *driver.Config) { c.CacheExternal = []string{"vault", "aws"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, code, ok := parseDriverFlags(append([]string{"-node-id", "n1"}, tc.args...), io.Discard, io.Discard)
			if !ok {
				t.Fatalf("flags refused (exit %d)", code)
			}
			want := defaults
			tc.set(&want)
			if got := f.config(); !reflect.DeepEqual(got, want) {
				t.Errorf("config:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// The restarts on change are a hook only with --restart-on-change: off by
// default, nothing of the class parameter is acted on (the ignored hook
// posts a Warning Event instead).
func TestRestartHookOnlyWithFlag(t *testing.T) {
	for _, args := range [][]string{nil, {"--restart-on-change"}} {
		var s syncFlags
		fs := flag.NewFlagSet("driver", flag.ContinueOnError)
		s.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		hooks, closeAll, err := s.hooks(context.Background(), &rest.Config{Host: "https://127.0.0.1:1"}, "node", nil, "secretfs", nil, nil, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, h := range hooks {
			if _, ok := h.(*restart.Restarter); ok {
				n++
			}
		}
		closeAll()
		if want := len(args); n != want {
			t.Errorf("flags %q: %d restart hooks, want %d", args, n, want)
		}
	}
}
