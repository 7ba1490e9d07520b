// Package class finds SecretProviderClasses (secrets-store.csi.x-k8s.io/v1),
// the admin-written objects that say which provider a volume uses and with
// which parameters. Classes come from the Kubernetes API (an informer cache)
// or, outside a cluster, from a directory of YAML files.
package class

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/secretfs/secretfs/provider"
)

// API identity of SecretProviderClass, the same as the Secrets Store CSI
// Driver's, so existing objects work unchanged.
const (
	Group    = "secrets-store.csi.x-k8s.io"
	Version  = "v1"
	Kind     = "SecretProviderClass"
	Resource = "secretproviderclasses"
)

// Class is one SecretProviderClass.
type Class struct {
	Name      string
	Namespace string
	// Provider is spec.provider: a built-in backend or an external plugin.
	Provider string
	// Parameters is spec.parameters, passed to the provider as they are.
	Parameters map[string]string
	// SecretObjects is spec.secretObjects: Kubernetes Secrets to mirror
	// mounted objects into (internal/kube/secretsync, when sync is on).
	SecretObjects []SecretObject
	// Unknown names the spec fields the driver does not act on (sorted), so
	// that the pod's owner can be told instead of the fields being dropped.
	Unknown []string
}

// specFields are the spec fields the driver acts on.
var specFields = map[string]bool{"provider": true, "parameters": true, "secretObjects": true}

// unknownFields returns the keys of spec that are not specFields, sorted.
func unknownFields(spec map[string]any) []string {
	var out []string
	for k := range spec {
		if !specFields[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// SecretObject is one entry of spec.secretObjects.
type SecretObject struct {
	SecretName  string             `json:"secretName,omitempty"`
	Type        string             `json:"type,omitempty"`
	Labels      map[string]string  `json:"labels,omitempty"`
	Annotations map[string]string  `json:"annotations,omitempty"`
	Data        []SecretObjectData `json:"data,omitempty"`
}

// SecretObjectData maps one mounted object to a key of the synced Secret.
type SecretObjectData struct {
	ObjectName string `json:"objectName,omitempty"`
	Key        string `json:"key,omitempty"`
}

// Source looks classes up by namespace and name.
type Source interface {
	// Get returns the class or an error with a gRPC code: NotFound (naming
	// the class and namespace) when there is none.
	Get(ctx context.Context, namespace, name string) (*Class, error)
}

// object is the wire form of a SecretProviderClass.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Provider      string            `json:"provider"`
		Parameters    map[string]string `json:"parameters"`
		SecretObjects []SecretObject    `json:"secretObjects"`
	} `json:"spec"`
}

// DeprecatedVersion is the version the Secrets Store CSI Driver still
// serves with the same schema; classes written as it work unchanged.
const DeprecatedVersion = "v1alpha1"

func (o *object) isClass() bool {
	return o.Kind == Kind && (o.APIVersion == Group+"/"+Version || o.APIVersion == Group+"/"+DeprecatedVersion)
}

func (o *object) class() *Class {
	ns := o.Metadata.Namespace
	if ns == "" {
		ns = "default"
	}
	return &Class{
		Name:          o.Metadata.Name,
		Namespace:     ns,
		Provider:      o.Spec.Provider,
		Parameters:    o.Spec.Parameters,
		SecretObjects: o.Spec.SecretObjects,
	}
}

// check returns an InvalidArgument error for a class no provider can serve.
func (c *Class) check() error {
	if strings.TrimSpace(c.Provider) == "" {
		return provider.InvalidArgument("SecretProviderClass %q in namespace %q has no spec.provider: set it to the backend to use", c.Name, c.Namespace)
	}
	return nil
}

func notFound(namespace, name, hint string) error {
	// The first words are the Secrets Store CSI Driver's, which users and
	// their scripts grep for; ours follow.
	msg := fmt.Sprintf("failed to get secretproviderclass %s/%s: SecretProviderClass %q not found in namespace %q: create it in the pod's namespace (classes are never looked up elsewhere)", namespace, name, name, namespace)
	if hint != "" {
		msg += "; " + hint
	}
	return provider.NotFound("%s", msg)
}
