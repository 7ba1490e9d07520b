package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/secretfs/secretfs/internal/agent"
	"github.com/secretfs/secretfs/provider/azure"
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
		namespace   = fs.String("namespace", "default", "namespace of the class read from the API server (-kubeconfig without -class)")
		target      = fs.String("target", "", "directory the command finds the files in (default /run/secretfs/run-PID); exported as "+agent.TargetEnv)
		interval    = fs.Duration("interval", 2*time.Minute, "refresh interval")
		sa          = fs.String("service-account", "default", "service account name the backend sees")
		onChange    = fs.String("on-change", "none", "after new files are swapped in: none, restart, or signal:NAME (e.g. signal:HUP)")
		stopTimeout = fs.Duration("stop-timeout", 10*time.Second, "-on-change restart: SIGKILL the command this long after SIGTERM")
		maskOut     = fs.Bool("mask", false, "replace the content of every file of the volume with *** in the command's stdout and stderr (they become pipes)")
		maskBase64  = fs.Bool("mask-base64", false, "with -mask: also their base64 forms (standard and URL-safe, padded or not)")
		envs        envFlag
		owner       ownerFlags
		tmpfsSize   = quantityFlag{bytes: 8 << 20}
		logs        logFlags
		backends    backendFlags
	)
	fs.Var(&envs, "env", "NAME=object: put the content of a file of the volume into the command's environment (repeatable; weaker than files: see the README)")
	fs.Var(&tmpfsSize, "tmpfs-size", "size cap of the tmpfs (a quantity, e.g. 8Mi)")
	owner.register(fs, "run the command as this user, who owns the files,")
	logs.register(fs)
	backends.register(fs)
	backends.registerExternal(fs)
	localAgentDefaults(fs)
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
	if *maskBase64 && !*maskOut {
		return fail(stderr, fs, 2, "-mask-base64 needs -mask")
	}
	change, err := agent.ParseOnChange(*onChange)
	if err != nil {
		return fail(stderr, fs, 2, "-on-change: %v", err)
	}
	files, uid, gid, err := owner.resolve()
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	if gid >= 0 && uid < 0 {
		return fail(stderr, fs, 2, "-gid needs -uid: the command would keep root's user")
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	cfg := agent.RunConfig{
		ClassFile: *classFile, ClassName: *className, Namespace: *namespace,
		Target: *target, Interval: *interval, ServiceAccount: *sa, TmpfsSize: tmpfsSize.bytes,
		UID: uid, GID: gid, Owner: files, Env: envs.vars, OnChange: change, StopTimeout: *stopTimeout,
		Mask: *maskOut, MaskBase64: *maskBase64, Command: command, Logger: log,
	}
	if cfg.Target == "" {
		cfg.Target = agent.DefaultRunTarget()
	}
	ctx := context.Background()
	restConfig, err := localRESTConfig(*kubeconfig)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	src, err := backends.agent(restConfig, *classFile, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer src.external.Close()
	cfg.NewClasses, cfg.Providers, cfg.Token, cfg.TokenAudience = src.newClasses, src.providers, src.token, src.audience
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

// localAgentDefaults sets, before parsing, the defaults that differ for a
// local agent: the VM's managed identity is the identity of the host admin
// who runs the agent, so every class may use it unless the flag says
// otherwise.
func localAgentDefaults(fs *flag.FlagSet) {
	if f := fs.Lookup(strings.TrimPrefix(azure.ManagedIdentityFlag, "--")); f != nil {
		_ = f.Value.Set("*")
		f.DefValue = "*"
		f.Usage = `azure: comma-separated namespaces whose classes may use the VM's managed identity (useVMManagedIdentity); "*" (default for the local agent): all`
	}
}

// kubeconfigToken is the bearer token of a local agent's kubeconfig (inline
// or from its token file), which the kubernetes backend reads Secrets with.
// None is fine: other backends need none.
func kubeconfigToken(cfg *rest.Config) (string, error) {
	switch {
	case cfg == nil:
		return "", nil
	case cfg.BearerToken != "":
		return cfg.BearerToken, nil
	case cfg.BearerTokenFile != "":
		b, err := os.ReadFile(cfg.BearerTokenFile)
		if err != nil {
			return "", fmt.Errorf("-kubeconfig: reading its token file: %v", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return "", nil
}
