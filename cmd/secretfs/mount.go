package main

import (
	"context"
	"errors"
	"io"
	"os/signal"
	"syscall"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/internal/agent"
)

func runMount(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("mount", "Mount a SecretProviderClass at a directory on a tmpfs, refresh it on an interval,\nand unmount it on SIGINT or SIGTERM (the local agent; needs root).", stdout)
	var (
		classFile  = fs.String("class", "", "YAML file with the SecretProviderClass to mount")
		className  = fs.String("class-name", "", "which class of the file, or the class to read from the API server with -kubeconfig")
		kubeconfig = fs.String("kubeconfig", "", "API server (and its token) for the kubernetes backend, and for the class -class-name when there is no -class")
		namespace  = fs.String("namespace", "default", "namespace of the class read from the API server (-kubeconfig without -class)")
		target     = fs.String("target", "", "directory to mount at (required; created if missing, removed on exit)")
		interval   = fs.Duration("interval", driver.DefaultRotationInterval, "refresh interval")
		sa         = fs.String("service-account", "default", "service account name the backend sees")
		tmpfsSize  = quantityFlag{bytes: driver.DefaultTmpfsSize}
		logs       logFlags
		backends   backendFlags
	)
	fs.Var(&tmpfsSize, "tmpfs-size", "size cap of the tmpfs (a quantity, e.g. 8Mi)")
	var owner ownerFlags
	owner.register(fs, "owner of the files")
	logs.register(fs)
	backends.register(fs)
	backends.registerExternal(fs)
	localAgentDefaults(fs)
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if (*classFile == "" && (*kubeconfig == "" || *className == "")) || *target == "" {
		return fail(stderr, fs, 2, "-target, and -class or -kubeconfig with -class-name, are required (see %s -h)", fs.Name())
	}
	files, _, _, err := owner.resolve()
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	restConfig, err := localRESTConfig(*kubeconfig)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	src, err := backends.agent(restConfig, *classFile, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer src.external.Close()
	var classes class.Source
	if src.newClasses != nil {
		if classes, err = src.newClasses(context.Background()); err != nil {
			return fail(stderr, fs, 1, "%v", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = agent.Run(ctx, agent.Config{
		ClassFile:      *classFile,
		ClassName:      *className,
		Target:         *target,
		Interval:       *interval,
		ServiceAccount: *sa,
		Providers:      src.providers,
		TmpfsSize:      tmpfsSize.bytes,
		Owner:          &files,
		TokenAudience:  src.audience,
		Token:          src.token,
		Classes:        classes,
		Namespace:      *namespace,
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
