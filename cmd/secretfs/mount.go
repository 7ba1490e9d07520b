package main

import (
	"context"
	"errors"
	"io"
	"os/signal"
	"syscall"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/agent"
)

func runMount(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("mount", "Mount a SecretProviderClass at a directory on a tmpfs, refresh it on an interval,\nand unmount it on SIGINT or SIGTERM (the local agent; needs root).", stdout)
	var (
		classFile = fs.String("class", "", "YAML file with the SecretProviderClass to mount (required)")
		className = fs.String("class-name", "", "which class of the file, when it has several")
		target    = fs.String("target", "", "directory to mount at (required; created if missing, removed on exit)")
		interval  = fs.Duration("interval", driver.DefaultRotationInterval, "refresh interval")
		sa        = fs.String("service-account", "default", "service account name the backend sees")
		tmpfsSize = quantityFlag{bytes: driver.DefaultTmpfsSize}
		logs      logFlags
		backends  backendFlags
	)
	fs.Var(&tmpfsSize, "tmpfs-size", "size cap of the tmpfs (a quantity, e.g. 8Mi)")
	logs.register(fs)
	backends.register(fs)
	backends.registerExternal(fs)
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *classFile == "" || *target == "" {
		return fail(stderr, fs, 2, "-class and -target are required (see %s -h)", fs.Name())
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	providers, external, err := backends.resolver(nil, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer external.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = agent.Run(ctx, agent.Config{
		ClassFile:      *classFile,
		ClassName:      *className,
		Target:         *target,
		Interval:       *interval,
		ServiceAccount: *sa,
		Providers:      providers,
		TmpfsSize:      tmpfsSize.bytes,
		Logger:         log,
	})
	if errors.Is(err, agent.ErrNotRoot) {
		return fail(stderr, fs, 1, "%v: run it with sudo or as root", err)
	}
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	return 0
}
