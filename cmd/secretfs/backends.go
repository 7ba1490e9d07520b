package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/azure"
	"github.com/secretfs/secretfs/provider/fake"
	"github.com/secretfs/secretfs/provider/kubernetes"
	"github.com/secretfs/secretfs/provider/plugin"
)

// backendFlags configure the built-in backends. Endpoints and data sources are
// flags of the node admin, never class parameters: a pod author must not be
// able to point a backend (and the pod's token) somewhere else.
type backendFlags struct {
	fakeDataDir string

	providerDirs    string
	providerTimeout time.Duration
	providerMaxMsg  quantityFlag
	audiences       plugin.Audiences

	azureVaultSuffix   string
	azureAuthorityHost string
	azureCAFile        string
	azureVaultAddress  string
	azureConcurrency   int
	azureThrottle      time.Duration
	azurePEMChain      bool
	azureMINamespaces  string

	kubeAudience   string
	kubeQPS        float64
	kubeMaxWatches int

	// enabled lists the built-in backends classes may use (-backends); nil:
	// all of them (commands without the flag).
	enabled []string
}

// builtinNames are the in-process backends, in the order help text lists them.
var builtinNames = []string{"azure", "kubernetes", "fake"}

// registerAllowList registers -backends, the node admin's switch for the
// built-in backends. External providers are governed by their sockets: a
// provider whose socket the admin did not install cannot be reached.
func (b *backendFlags) registerAllowList(fs *flag.FlagSet, def string) {
	b.enabled = splitList(def)
	fs.Func("backends", "comma-separated built-in backends that classes may use, of "+strings.Join(builtinNames, ", ")+
		" (default "+def+"); a class naming another built-in one fails FailedPrecondition. fake is for tests and demos: it mounts whatever a class asks for",
		func(v string) error {
			names := splitList(v)
			for _, n := range names {
				if !slices.Contains(builtinNames, n) {
					return fmt.Errorf("%q is not a built-in backend (%s)", n, strings.Join(builtinNames, ", "))
				}
			}
			b.enabled = names
			return nil
		})
}

// allowed reports whether a class may use the built-in backend name.
func (b *backendFlags) allowed(name string) bool {
	return b.enabled == nil || slices.Contains(b.enabled, name)
}

// registerExternal registers the flags for reaching external providers,
// which only the commands that resolve class providers (driver, mount) use.
func (b *backendFlags) registerExternal(fs *flag.FlagSet) {
	fs.StringVar(&b.providerDirs, "provider-dir", "/var/run/secrets-store-csi-providers,/etc/kubernetes/secrets-store-csi-providers",
		"comma-separated directories searched for <provider>.sock of external providers")
	fs.DurationVar(&b.providerTimeout, "provider-timeout", plugin.DefaultTimeout, "deadline of one call to an external provider")
	b.providerMaxMsg.bytes = plugin.DefaultMaxRecvMsgSize
	fs.Var(&b.providerMaxMsg, "provider-max-message-size", "largest response accepted from an external provider")
	b.audiences = plugin.DefaultAudiences()
	fs.Var(&b.audiences, "provider-audiences", `NAME=AUDIENCE[,AUDIENCE...]: the pod's service-account token audiences external provider NAME receives (repeat per provider; "" is the API server's audience, *.suffix matches a suffix, NAME= sends none); replaces that provider's default`)
}

// register registers the flags of the built-in backends.
func (b *backendFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.fakeDataDir, "fake-data-dir", "", "fake backend: files <dir>/<namespace>/<objectName> override values (for tests and demos)")
	fs.StringVar(&b.azureVaultSuffix, "azure-vault-suffix", "", "azure: Key Vault DNS suffix replacing the cloud's (private or sovereign clouds)")
	fs.StringVar(&b.azureAuthorityHost, "azure-authority-host", "", "azure: Entra ID authority host URL replacing the cloud's (https)")
	fs.StringVar(&b.azureCAFile, "azure-ca-file", "", "azure: PEM file of CA certificates trusted in addition to the system roots")
	fs.StringVar(&b.azureVaultAddress, "azure-vault-address", "", "azure: host:port that every vault under -azure-vault-suffix is reached at (local clusters and tests)")
	fs.IntVar(&b.azureConcurrency, "azure-max-concurrent-per-vault", 8, "azure: in-flight Key Vault requests per vault")
	fs.DurationVar(&b.azureThrottle, "azure-throttle-budget", 60*time.Second, "azure: how long one object may retry HTTP 429 before the mount fails Unavailable")
	fs.BoolVar(&b.azurePEMChain, "azure-construct-pem-chain", true, "azure: order PEM certificate chains leaf to root")
	fs.StringVar(&b.azureMINamespaces, strings.TrimPrefix(azure.ManagedIdentityFlag, "--"), "",
		`azure: comma-separated namespaces whose classes may use the node's managed identity (useVMManagedIdentity), "*" for all; empty: none (the identity is the node's, not the pod's)`)
	fs.StringVar(&b.kubeAudience, "kubernetes-audience", "", `kubernetes: audience of the CSIDriver tokenRequests item whose pod token reads Secrets ("" = the API server's own)`)
	fs.Float64Var(&b.kubeQPS, "kubernetes-qps", 50, "kubernetes: requests per second to the API server for all pods together")
	fs.IntVar(&b.kubeMaxWatches, "kubernetes-max-watches", kubernetes.DefaultMaxWatches,
		"kubernetes: API watches of Secrets kept open for rotation, about 70 KiB each; past it new volumes rotate at their interval")
}

// builtins constructs the in-process backends by provider name.
func (b *backendFlags) builtins(cfg *rest.Config, log *slog.Logger) (map[string]provider.Provider, error) {
	azureOpts := azure.Options{
		VaultDNSSuffix:            b.azureVaultSuffix,
		AuthorityHost:             b.azureAuthorityHost,
		VaultAddress:              b.azureVaultAddress,
		MaxConcurrentPerVault:     b.azureConcurrency,
		ThrottleBudget:            b.azureThrottle,
		DisablePEMChainOrdering:   !b.azurePEMChain,
		ManagedIdentityNamespaces: splitList(b.azureMINamespaces),
	}
	if b.azureCAFile != "" {
		pem, err := os.ReadFile(b.azureCAFile)
		if err != nil {
			return nil, fmt.Errorf("-azure-ca-file: %v", err)
		}
		azureOpts.ExtraCAPEM = pem
	}
	return map[string]provider.Provider{
		"fake":       fake.New(fake.Options{DataDir: b.fakeDataDir}),
		"azure":      azure.New(azureOpts),
		"kubernetes": b.kubernetes(cfg, log),
	}, nil
}

// kubernetes builds the Kubernetes backend. It only borrows the API server's
// address and CA from cfg: Secrets are read with each pod's own token. Without
// an API server (the local agent) every fetch says how to configure one.
func (b *backendFlags) kubernetes(cfg *rest.Config, log *slog.Logger) provider.Provider {
	var opts kubernetes.Options
	if cfg != nil {
		opts = kubernetes.OptionsFromConfig(cfg)
	}
	opts.Audience, opts.Logger = b.kubeAudience, log
	opts.QPS, opts.Burst = float32(b.kubeQPS), int(2*b.kubeQPS)
	opts.MaxWatches = b.kubeMaxWatches
	p, err := kubernetes.New(opts)
	if err != nil {
		return unconfigured{fmt.Sprintf("the kubernetes provider is not configured on this node: %v", err)}
	}
	return p
}

// unconfigured is a backend that could not be set up; it fails every fetch
// with the reason, so pods see it in their events.
type unconfigured struct{ reason string }

func (u unconfigured) Fetch(context.Context, *provider.Request) (*provider.Result, error) {
	return nil, provider.Errorf(codes.FailedPrecondition, "%s", u.reason)
}

// resolver returns the function the driver uses to find a class's provider:
// a built-in backend by name, or else an external provider's socket, and the
// client for the external ones.
func (b *backendFlags) resolver(cfg *rest.Config, log *slog.Logger) (func(string) (provider.Provider, error), *plugin.Client, error) {
	builtin, err := b.builtins(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	external := plugin.New(plugin.Options{
		SocketDirs:     splitList(b.providerDirs),
		Timeout:        b.providerTimeout,
		MaxRecvMsgSize: int(b.providerMaxMsg.bytes),
		Audiences:      &b.audiences,
		Logger:         log,
	})
	enabled := strings.Join(b.enabled, ",")
	if enabled == "" {
		enabled = "none"
	}
	resolve := func(name string) (provider.Provider, error) {
		if p, ok := builtin[name]; ok {
			if !b.allowed(name) {
				return nil, provider.Errorf(codes.FailedPrecondition,
					"the built-in backend %q is disabled on this node (driver flag --backends=%s): the node admin enables it by adding it to --backends (Helm value backends)", name, enabled)
			}
			return p, nil
		}
		return external.Provider(name)
	}
	return resolve, external, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// agentBackends is what each local-agent command (mount, run, credentials)
// takes from its kubeconfig: the class from the API server when there is no
// class file (newClasses nil otherwise), the backends, and the kubeconfig's
// token, which the agent hands the kubernetes backend as the pod's token
// for audience. Close external when done.
type agentBackends struct {
	newClasses func(context.Context) (class.Source, error)
	providers  func(string) (provider.Provider, error)
	external   *plugin.Client
	token      string
	audience   string
}

func (b *backendFlags) agent(restConfig *rest.Config, classFile string, log *slog.Logger) (agentBackends, error) {
	a := agentBackends{audience: b.kubeAudience}
	if classFile == "" {
		a.newClasses = func(ctx context.Context) (class.Source, error) { return class.NewAPI(ctx, restConfig) }
	}
	var err error
	if a.token, err = kubeconfigToken(restConfig); err != nil {
		return a, err
	}
	a.providers, a.external, err = b.resolver(restConfig, log)
	return a, err
}
