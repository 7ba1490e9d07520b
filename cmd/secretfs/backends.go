package main

import (
	"flag"
	"log/slog"

	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/fake"
)

// backendFlags configure the built-in backends. Endpoints and data sources are
// flags of the node admin, never class parameters: a pod author must not be
// able to point a backend (and the pod's token) somewhere else.
type backendFlags struct {
	fakeDataDir string
}

func (b *backendFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.fakeDataDir, "fake-data-dir", "", "fake backend: files <dir>/<namespace>/<objectName> override values (for tests and demos)")
}

// needsAPI reports whether a built-in backend needs the API server.
func (b *backendFlags) needsAPI() bool { return false }

// resolver returns the function the driver uses to find a class's provider.
func (b *backendFlags) resolver(_ *rest.Config, _ *slog.Logger) (func(string) (provider.Provider, error), func(), error) {
	builtin := map[string]provider.Provider{
		"fake": fake.New(fake.Options{DataDir: b.fakeDataDir}),
	}
	resolve := func(name string) (provider.Provider, error) {
		if p, ok := builtin[name]; ok {
			return p, nil
		}
		return nil, provider.InvalidArgument("unknown provider %q: built-in providers are fake, azure and kubernetes", name)
	}
	return resolve, func() {}, nil
}
