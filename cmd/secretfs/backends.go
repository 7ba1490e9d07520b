package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/azure"
	"github.com/secretfs/secretfs/provider/fake"
)

// backendFlags configure the built-in backends. Endpoints and data sources are
// flags of the node admin, never class parameters: a pod author must not be
// able to point a backend (and the pod's token) somewhere else.
type backendFlags struct {
	fakeDataDir string

	azureVaultSuffix   string
	azureAuthorityHost string
	azureCAFile        string
	azureVaultAddress  string
	azureConcurrency   int
	azureThrottle      time.Duration
	azurePEMChain      bool
}

func (b *backendFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.fakeDataDir, "fake-data-dir", "", "fake backend: files <dir>/<namespace>/<objectName> override values (for tests and demos)")
	fs.StringVar(&b.azureVaultSuffix, "azure-vault-suffix", "", "azure: Key Vault DNS suffix replacing the cloud's (private or sovereign clouds)")
	fs.StringVar(&b.azureAuthorityHost, "azure-authority-host", "", "azure: Entra ID authority host URL replacing the cloud's (https)")
	fs.StringVar(&b.azureCAFile, "azure-ca-file", "", "azure: PEM file of CA certificates trusted in addition to the system roots")
	fs.StringVar(&b.azureVaultAddress, "azure-vault-address", "", "azure: host:port that every vault under -azure-vault-suffix is reached at (local clusters and tests)")
	fs.IntVar(&b.azureConcurrency, "azure-max-concurrent-per-vault", 8, "azure: in-flight Key Vault requests per vault")
	fs.DurationVar(&b.azureThrottle, "azure-throttle-budget", 60*time.Second, "azure: how long one object may retry HTTP 429 before the mount fails Unavailable")
	fs.BoolVar(&b.azurePEMChain, "azure-construct-pem-chain", true, "azure: order PEM certificate chains leaf to root")
}

// needsAPI reports whether a built-in backend needs the API server.
func (b *backendFlags) needsAPI() bool { return false }

// builtins constructs the in-process backends by provider name.
func (b *backendFlags) builtins(_ *rest.Config, _ *slog.Logger) (map[string]provider.Provider, error) {
	azureOpts := azure.Options{
		VaultDNSSuffix:          b.azureVaultSuffix,
		AuthorityHost:           b.azureAuthorityHost,
		VaultAddress:            b.azureVaultAddress,
		MaxConcurrentPerVault:   b.azureConcurrency,
		ThrottleBudget:          b.azureThrottle,
		DisablePEMChainOrdering: !b.azurePEMChain,
	}
	if b.azureCAFile != "" {
		pem, err := os.ReadFile(b.azureCAFile)
		if err != nil {
			return nil, fmt.Errorf("-azure-ca-file: %v", err)
		}
		azureOpts.ExtraCAPEM = pem
	}
	return map[string]provider.Provider{
		"fake":  fake.New(fake.Options{DataDir: b.fakeDataDir}),
		"azure": azure.New(azureOpts),
	}, nil
}

// resolver returns the function the driver uses to find a class's provider.
func (b *backendFlags) resolver(cfg *rest.Config, log *slog.Logger) (func(string) (provider.Provider, error), func(), error) {
	builtin, err := b.builtins(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	resolve := func(name string) (provider.Provider, error) {
		if p, ok := builtin[name]; ok {
			return p, nil
		}
		return nil, provider.InvalidArgument("unknown provider %q: built-in providers are fake, azure and kubernetes", name)
	}
	return resolve, func() {}, nil
}
