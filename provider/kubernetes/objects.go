package kubernetes

import (
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
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
	// LabelSelector, instead of SecretName, mounts every Secret of the
	// pod's namespace it selects (Kubernetes label selector syntax), each
	// key as the file <path>/<secret>/<key>.
	LabelSelector string `yaml:"labelSelector"`
}

// maxSelectorLen bounds a label selector's text before it is parsed: the
// parser is linear, and no real selector comes near it.
const maxSelectorLen = 1024

// maxSelectors bounds a class's distinct selectors: each is a list (or
// more) per fetch and an API watch per service account on the node, and a
// selector that selects nothing counts against no other limit.
const maxSelectors = 16

// maxSecretNames bounds a class's distinct Secret names: each is an API
// watch per service account on the node for as long as a volume of the
// class is mounted (about 70 KiB of the driver's memory each), and one
// volume naming a thousand optional Secrets that do not exist would hold
// a thousand.
const maxSecretNames = 64

// spec is a validated object with its mode resolved.
type spec struct {
	object
	mode os.FileMode
	// selector is the label selector in its normalized form (requirements
	// sorted, as labels.Selector.String writes them); "" for a named Secret.
	selector string
}

// parseObjects decodes and validates the `objects` parameter.
func parseObjects(param string, defaultMode os.FileMode) ([]spec, error) {
	var objs []object
	if err := provider.DecodeObjects(param, &objs); err != nil {
		return nil, err
	}
	if len(objs) == 0 {
		return nil, provider.InvalidArgument("parameter objects lists no Secret: add at least one item with secretName or labelSelector")
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
	if n := len(secretNames(specs)); n > maxSecretNames {
		return nil, provider.InvalidArgument("parameter objects names %d distinct Secrets, more than %d allowed: each is a watch on every node that mounts the class; "+
			"put the keys in fewer Secrets, split the class, or select them with a labelSelector", n, maxSecretNames)
	}
	if n := len(selectors(specs)); n > maxSelectors {
		return nil, provider.InvalidArgument("parameter objects has %d distinct labelSelectors, more than %d distinct allowed: each is a list per refresh and a watch on every node; "+
			"select with fewer, broader selectors (set-based: \"app in (a,b,c)\") and split by path", n, maxSelectors)
	}
	return specs, nil
}

func validateObject(o object, defaultMode os.FileMode) (spec, error) {
	s := spec{object: o, mode: defaultMode}
	if o.LabelSelector != "" {
		sel, err := validateSelector(o)
		if err != nil {
			return s, err
		}
		s.selector = sel
	} else if o.SecretName == "" {
		return s, fmt.Errorf("secretName or labelSelector is required")
	} else if msgs := validation.IsDNS1123Subdomain(o.SecretName); len(msgs) > 0 {
		return s, fmt.Errorf("secretName %q is not a valid Secret name: %s", provider.Clip(o.SecretName, 80), strings.Join(msgs, "; "))
	}
	if o.Key != "" && o.LabelSelector == "" {
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

// validateSelector checks a labelSelector item and returns its selector in
// normalized form. A selector item names no Secret and no key, and cannot
// be optional: an empty selection is already no error.
func validateSelector(o object) (string, error) {
	switch {
	case o.SecretName != "":
		return "", fmt.Errorf("secretName and labelSelector exclude each other: one item names a Secret or selects Secrets")
	case o.Key != "":
		return "", fmt.Errorf("key cannot be used with labelSelector: every key of each selected Secret is mounted as <path>/<secret>/<key>")
	case o.Optional:
		return "", fmt.Errorf("optional cannot be used with labelSelector: a selector that selects nothing mounts nothing and is no error")
	case len(o.LabelSelector) > maxSelectorLen:
		return "", fmt.Errorf("labelSelector is %d bytes long, more than the %d allowed", len(o.LabelSelector), maxSelectorLen)
	}
	sel, err := labels.Parse(o.LabelSelector)
	if err != nil {
		return "", fmt.Errorf("labelSelector %q is not a Kubernetes label selector: %v", provider.Clip(o.LabelSelector, 80), err)
	}
	if sel.Empty() {
		return "", fmt.Errorf("labelSelector %q selects every Secret of the namespace: name at least one label", provider.Clip(o.LabelSelector, 80))
	}
	return sel.String(), nil
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

// selectedPath is where key of the selected Secret secret is written.
func (s spec) selectedPath(secret, key string) string {
	if s.Path != "" {
		return s.Path + "/" + secret + "/" + key
	}
	return secret + "/" + key
}

// selectors returns the distinct normalized selectors, in first-seen order.
func selectors(specs []spec) []string {
	seen := make(map[string]bool, len(specs))
	var out []string
	for _, s := range specs {
		if s.selector != "" && !seen[s.selector] {
			seen[s.selector] = true
			out = append(out, s.selector)
		}
	}
	return out
}

// secretNames returns the distinct Secret names, in first-seen order.
func secretNames(specs []spec) []string {
	seen := make(map[string]bool, len(specs))
	var names []string
	for _, s := range specs {
		if s.selector == "" && !seen[s.SecretName] {
			seen[s.SecretName] = true
			names = append(names, s.SecretName)
		}
	}
	return names
}
