package content

import (
	"maps"

	"google.golang.org/grpc/status"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// ForClass reads cls's content settings (Parse); nil for a class without
// any. Its errors name the class.
func ForClass(cls *class.Class) (*Plan, error) {
	p, err := Parse(cls.Parameters)
	if err != nil {
		return nil, provider.Errorf(provider.CodeOf(err), "SecretProviderClass %q in namespace %q: %s", cls.Name, cls.Namespace, err.Error())
	}
	return p, nil
}

// Shareable says whether the node cache may share a provider's answers for
// cls between the volumes of one identity: the class's secretfs.dev/nodeCache
// when it sets one; otherwise yes for a built-in backend, and for an
// external provider only when the admin listed it (listed).
func Shareable(cls *class.Class, external, listed bool) (bool, error) {
	share, set, err := NodeCache(cls.Parameters)
	switch {
	case err != nil:
		return false, provider.InvalidArgument("class %q in namespace %q: %s", cls.Name, cls.Namespace, status.Convert(err).Message())
	case set:
		return share, nil
	case !external:
		return true, nil
	}
	return listed, nil
}

// KeyParameters are the parameters the node cache key is made of: the
// class's own (before the driver took its settings out, since optional
// objects and key paths change what a fetch returns), and with stale
// content on (staleIfError), the class name, so that stale content never
// crosses classes.
func KeyParameters(cls *class.Class, staleIfError bool) map[string]string {
	if !staleIfError {
		return cls.Parameters
	}
	params := maps.Clone(cls.Parameters)
	params[Prefix+"class"] = cls.Name // no class can set it: Parse refuses unknown secretfs.dev/ names
	return params
}
