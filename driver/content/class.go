package content

import (
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
