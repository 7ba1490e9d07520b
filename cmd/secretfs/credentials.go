package main

import (
	"context"
	"errors"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/internal/agent"
)

const credentialsSynopsis = `Serve the files of a SecretProviderClass to systemd units as credentials:
a unit with LoadCredential=ID:SOCKET gets the file of the volume named ID.
The class is mounted on a tmpfs in the server's own mount namespace (never
in the host's mount table) and refreshed on an interval; each connection
gets the current file. The socket is root's, mode 0600. Without -socket, the
socket of a systemd socket unit (socket activation). Needs root.`

func runCredentials(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("credentials", credentialsSynopsis, stdout)
	lim := agent.DefaultCredentialLimits
	var (
		classFile  = fs.String("class", "", "YAML file with the SecretProviderClass to serve")
		className  = fs.String("class-name", "", "which class of the file, or the class to read from the API server with -kubeconfig")
		kubeconfig = fs.String("kubeconfig", "", "API server (and its token) for the kubernetes backend, and for the class -class-name when there is no -class")
		namespace  = fs.String("namespace", "default", "namespace of the class read from the API server (-kubeconfig without -class)")
		socket     = fs.String("socket", "", "unix socket to serve on, e.g. /run/secretfs/credentials.sock (mode 0600; its directory is created 0700 if missing); empty: systemd's socket activation")
		target     = fs.String("target", "", "mount point of the tmpfs in the server's mount namespace (default credentials-PID next to the socket)")
		interval   = fs.Duration("interval", driver.DefaultRotationInterval, "refresh interval")
		sa         = fs.String("service-account", "default", "service account name the backend sees")
		only       = fs.Bool("allowed-only", false, "serve only the IDs that have an -allow rule")
		tmpfsSize  = quantityFlag{bytes: driver.DefaultTmpfsSize}
		allow      allowFlag
		logs       logFlags
		backends   backendFlags
	)
	fs.Var(&allow, "allow", "ID=unit[,unit...]: serve credential ID only to these units (names, or patterns such as app@*.service); repeatable")
	fs.IntVar(&lim.MaxConnections, "max-connections", lim.MaxConnections, "credentials sent at once")
	fs.IntVar(&lim.MaxOpen, "max-open", lim.MaxOpen, "connections held at once (sending or waiting); more are closed without data")
	fs.DurationVar(&lim.Timeout, "timeout", lim.Timeout, "how long a connection may wait for its turn, and then to take its credential")
	fs.Var(&tmpfsSize, "tmpfs-size", "size cap of the tmpfs (a quantity, e.g. 8Mi)")
	logs.register(fs)
	backends.register(fs)
	backends.registerExternal(fs)
	localAgentDefaults(fs)
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *classFile == "" && (*kubeconfig == "" || *className == "") {
		return fail(stderr, fs, 2, "-class, or -kubeconfig with -class-name, is required (see %s -h)", fs.Name())
	}
	if err := lim.Check(); err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	allow.rules.Only = *only
	if *only && len(allow.rules.Units) == 0 {
		return fail(stderr, fs, 2, "-allowed-only without any -allow would serve nothing")
	}
	log, err := logs.logger(stderr)
	if err != nil {
		return fail(stderr, fs, 2, "%v", err)
	}
	restConfig, err := localRESTConfig(*kubeconfig)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	cfg := agent.CredentialsConfig{
		ClassFile: *classFile, ClassName: *className, Namespace: *namespace, Socket: *socket, Target: *target,
		Interval: *interval, ServiceAccount: *sa, TmpfsSize: tmpfsSize.bytes, Allow: allow.rules, Limits: lim, Logger: log,
	}
	src, err := backends.agent(restConfig, *classFile, log)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer src.external.Close()
	cfg.NewClasses, cfg.Providers, cfg.Token, cfg.TokenAudience = src.newClasses, src.providers, src.token, src.audience

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = agent.Credentials(ctx, cfg)
	if errors.Is(err, agent.ErrNotRoot) {
		return fail(stderr, fs, 1, "%v: run it with sudo or as root", err)
	}
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	return 0
}

// allowFlag collects -allow ID=unit,...
type allowFlag struct{ rules agent.CredentialRules }

func (a *allowFlag) String() string {
	if a == nil {
		return ""
	}
	var parts []string
	for id, units := range a.rules.Units {
		parts = append(parts, id+"="+strings.Join(units, ","))
	}
	return strings.Join(parts, " ")
}

func (a *allowFlag) Set(s string) error { return a.rules.Add(s) }
