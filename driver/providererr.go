package driver

import (
	"fmt"
	"strings"

	"github.com/secretfs/secretfs/provider"
)

// fetchError says which class, namespace and provider a backend error
// belongs to, keeping its code. An external provider's errors already
// begin with `provider "NAME": ` (the plugin client names the provider for
// its other callers); that prefix is not repeated.
func fetchError(v *volume, err error) error {
	msg := strings.TrimPrefix(err.Error(), fmt.Sprintf("provider %q: ", v.provider))
	return provider.Errorf(provider.CodeOf(err), "class %q in namespace %q, provider %q: %s", v.class, v.pod.Namespace, v.provider, msg)
}
