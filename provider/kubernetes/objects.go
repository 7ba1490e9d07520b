package kubernetes

import (
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/secretfs/secretfs/provider"
)

// object is one item of the `objects` class parameter.
type object struct {
	// SecretName is a Secret in the pod's own namespace.
	SecretName string `yaml:"secretName"`
	// Key selects one key of the Secret; empty means every key.
	Key string `yaml:"key"`
	// Path is the file name for one key (default: the key). For all keys it
	// is a directory prefix (default: none, files named after the keys at the
	// top of the volume).
	Path string `yaml:"path"`
	// FilePermission is an octal mode such as "0400".
	FilePermission string `yaml:"filePermission"`
	// Optional makes a missing Secret or key an empty result, not an error.
	Optional bool `yaml:"optional"`
}

// spec is a validated object with its mode resolved.
type spec struct {
	object
	mode os.FileMode
}

// parseObjects decodes and validates the `objects` parameter.
func parseObjects(param string, defaultMode os.FileMode) ([]spec, error) {
	var objs []object
	if err := provider.DecodeObjects(param, &objs); err != nil {
		return nil, err
	}
	if len(objs) == 0 {
		return nil, provider.InvalidArgument("parameter objects lists no Secret: add at least one item with secretName")
	}
	if defaultMode == 0 {
		defaultMode = provider.DefaultFileMode
	}
	specs := make([]spec, 0, len(objs))
	for i, o := range objs {
		s, err := validateObject(o, defaultMode)
		if err != nil {
			return nil, provider.InvalidArgument("parameter objects, item %d: %v", i, err)
		}
		specs = append(specs, s)
	}
	return specs, nil
}

func validateObject(o object, defaultMode os.FileMode) (spec, error) {
	s := spec{object: o, mode: defaultMode}
	if o.SecretName == "" {
		return s, fmt.Errorf("secretName is required")
	}
	if msgs := validation.IsDNS1123Subdomain(o.SecretName); len(msgs) > 0 {
		return s, fmt.Errorf("secretName %q is not a valid Secret name: %s", provider.Clip(o.SecretName, 80), strings.Join(msgs, "; "))
	}
	if o.Key != "" {
		if msgs := validation.IsConfigMapKey(o.Key); len(msgs) > 0 {
			return s, fmt.Errorf("key %q is not a valid Secret key: %s", provider.Clip(o.Key, 80), strings.Join(msgs, "; "))
		}
	}
	if o.Path != "" {
		if err := provider.ValidatePath(o.Path); err != nil {
			return s, err
		}
	}
	if o.FilePermission != "" {
		m, err := provider.ParseFileMode(o.FilePermission)
		if err != nil {
			return s, fmt.Errorf("filePermission %q %v", provider.Clip(o.FilePermission, 80), err)
		}
		s.mode = m
	}
	return s, nil
}

// filePath is where key of the Secret is written for this object.
func (s spec) filePath(key string) string {
	if s.Key != "" {
		if s.Path != "" {
			return s.Path
		}
		return s.Key
	}
	if s.Path != "" {
		return s.Path + "/" + key
	}
	return key
}

// secretNames returns the distinct Secret names, in first-seen order.
func secretNames(specs []spec) []string {
	seen := make(map[string]bool, len(specs))
	var names []string
	for _, s := range specs {
		if !seen[s.SecretName] {
			seen[s.SecretName] = true
			names = append(names, s.SecretName)
		}
	}
	return names
}
