package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/user"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/agent"
)

const runSynopsis = `Run a command with the files of a SecretProviderClass on a tmpfs that only it
(and what it starts) can see: a private mount namespace, never the host's mount
table. The files are refreshed on an interval; -on-change says what the command
learns of a change. Signals are passed on; the exit code is the command's.
Needs root.

  secretfs run -class class.yaml [flags] -- COMMAND [ARGS...]`

func runRun(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", runSynopsis, stdout)
	var (
		classFile   = fs.String("class", "", "YAML file with the SecretProviderClass to mount")
		className   = fs.String("class-name", "", "which class of the file, or the class to read from the API server with -kubeconfig")
		kubeconfig  = fs.String("kubeconfig", "", "API server (and its token) for the kubernetes backend, and for the class -class-name when there is no -class")
		namespace   = fs.String("namespace", "default", "namespace of the class (with -kubeconfig) and of the identity the backend sees")
		target      = fs.String("target", "", "directory the command finds the files in (default /run/secretfs/run-PID); exported as "+agent.TargetEnv)
		interval    = fs.Duration("interval", 2*time.Minute, "refresh interval")
		sa          = fs.String("service-account", "default", "service account name the backend sees")
		uidFlag     = fs.String("uid", "", "run the command as this user (name or number); default root")
		gidFlag     = fs.String("gid", "", "run the command as this group (name or number), which also owns the files; default the user's primary group")
		onChange    = fs.String("on-change", "none", "after new files are swapped in: none, restart, or signal:NAME (e.g. signal:HUP)")
		stopTimeout = fs.Duration("stop-timeout", 10*time.Second, "-on-change restart: SIGKILL the command this long after SIGTERM")
		envs        envFlag
		tmpfsSize   = quantityFlag{bytes: 8 << 20}
		logs        logFlags
		backends    backendFlags
	)
	fs.Var(&envs, "env", "NAME=object: put the content of a file of the volume into the command's environment (repeatable; weaker than files: see the README)")
	fs.Var(&tmpfsSize, "tmpfs-size", "size cap of the tmpfs (a quantity, e.g. 8Mi)")
	logs.register(fs)
	backends.register(fs)
	backends.registerExternal(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return fail(stderr, fs, 2, "%v (see %s -h)", err, fs.Name())
	}
	command := fs.Args()
	switch {
	case len(command) == 0:
		return fail(stderr, fs, 2, "no command: secretfs run [flags] -- COMMAND [ARGS...]")
	case *classFile == "" && (*kubeconfig == "" || *className == ""):
		return fail(stderr, fs, 2, "-class, or -kubeconfig with -class-name, is required (see %s -h)", fs.Name())
	}
	change, err := agent.ParseOnChange(*onChange)
	if err != nil {
		return fail(stderr, fs, 2, "-on-change: %v", err)
	}
	uid, gid, err := lookupIDs(*uidFlag, *gidFlag)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	cfg := agent.RunConfig{
		ClassFile: *classFile, ClassName: *className, Namespace: *namespace,
		Target: *target, Interval: *interval, ServiceAccount: *sa, TmpfsSize: tmpfsSize.bytes,
		UID: uid, GID: gid, Env: envs.vars, OnChange: change, StopTimeout: *stopTimeout,
		Command: command, Logger: log,
	}
	if cfg.Target == "" {
		cfg.Target = agent.DefaultRunTarget()
	}
	ctx := context.Background()
	restConfig, err := localRESTConfig(*kubeconfig)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	if *classFile == "" {
		if cfg.Classes, err = driver.NewAPIClassSource(ctx, restConfig); err != nil {
			return fail(stderr, fs, 1, "%v", err)
		}
	}
	providers, external, err := backends.resolver(restConfig, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer external.Close()
	cfg.Providers = providers
	code, err := agent.RunCommand(ctx, cfg)
	if errors.Is(err, agent.ErrNotRoot) {
		return fail(stderr, fs, 1, "%v: run it with sudo or as root", err)
	}
	if err != nil {
		return fail(stderr, fs, max(code, 1), "%v", err)
	}
	return code
}

// envFlag collects -env NAME=object.
type envFlag struct{ vars []agent.EnvVar }

func (e *envFlag) String() string {
	if e == nil {
		return ""
	}
	var parts []string
	for _, v := range e.vars {
		parts = append(parts, v.Name+"="+v.File)
	}
	return strings.Join(parts, ",")
}

func (e *envFlag) Set(s string) error {
	v, err := agent.ParseEnv(s)
	if err != nil {
		return err
	}
	e.vars = append(e.vars, v)
	return nil
}

// lookupIDs resolves -uid and -gid (names or numbers); -1 means root. A
// user without -gid runs as its primary group, never as root's group.
func lookupIDs(uidFlag, gidFlag string) (int, int, error) {
	uid, gid := -1, -1
	primary := ""
	if uidFlag != "" {
		if n, err := strconv.ParseUint(uidFlag, 10, 31); err == nil {
			uid = int(n)
			if u, err := user.LookupId(uidFlag); err == nil {
				primary = u.Gid
			}
		} else {
			u, err := user.Lookup(uidFlag)
			if err != nil {
				return 0, 0, fmt.Errorf("-uid %q: no such user", uidFlag)
			}
			uid, _ = strconv.Atoi(u.Uid)
			primary = u.Gid
		}
	}
	switch {
	case gidFlag != "":
		if n, err := strconv.ParseUint(gidFlag, 10, 31); err == nil {
			gid = int(n)
		} else {
			g, err := user.LookupGroup(gidFlag)
			if err != nil {
				return 0, 0, fmt.Errorf("-gid %q: no such group", gidFlag)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	case uid >= 0 && primary != "":
		gid, _ = strconv.Atoi(primary)
	case uid >= 0:
		return 0, 0, fmt.Errorf("-uid %s has no entry in the user database: give -gid too", uidFlag)
	}
	if gid >= 0 && uid < 0 {
		return 0, 0, errors.New("-gid needs -uid: the command would keep root's user")
	}
	return uid, gid, nil
}

// localRESTConfig loads the kubeconfig of a local agent; none is fine.
func localRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		return nil, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("-kubeconfig: %v", err)
	}
	return cfg, nil
}
