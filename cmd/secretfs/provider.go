package main

import (
	"context"
	"io"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/provider/plugin"
)

func runProvider(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("provider", "Serve a built-in backend over the Secrets Store CSI provider protocol (v1alpha1),\nso that other drivers, or secretfs on another socket, can use it.", stdout)
	var (
		backend    = fs.String("backend", "", "built-in backend to serve: fake, azure or kubernetes (required)")
		endpoint   = fs.String("endpoint", "", "unix socket to serve on, e.g. unix:///var/run/secrets-store-csi-providers/fake.sock (required)")
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig for the kubernetes backend's API server address (in-cluster when empty)")
		logs       logFlags
		backends   backendFlags
	)
	logs.register(fs)
	backends.register(fs)
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *backend == "" || *endpoint == "" {
		return fail(stderr, fs, 2, "-backend and -endpoint are required (see %s -h)", fs.Name())
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	restConfig, _ := loadRESTConfig(*kubeconfig)
	builtin, err := backends.builtins(restConfig, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	p, ok := builtin[*backend]
	if !ok {
		names := make([]string, 0, len(builtin))
		for n := range builtin {
			names = append(names, n)
		}
		sort.Strings(names)
		return fail(stderr, fs, 2, "-backend %q is not a built-in backend; want one of %s", *backend, strings.Join(names, ", "))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := plugin.Serve(ctx, *endpoint, p, plugin.WithLogger(log), plugin.WithRuntime("secretfs", driver.Version)); err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	return 0
}
