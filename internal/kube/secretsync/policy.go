package secretsync

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// A class is written by a tenant, and the sync writes with the driver's
// own identity: without these rules it is a confused deputy. A Secret of
// type kubernetes.io/service-account-token with the annotation
// kubernetes.io/service-account.name makes the token controller fill in a
// non-expiring token for any service account of the namespace; other
// labels and annotations in the Kubernetes domains steer what the cluster
// does with an object. So a class may ask only for the types that are data
// for applications, and for no label or annotation key in the domains
// kubernetes.io and k8s.io or their subdomains. The driver adds its own
// ManagedLabel (under csi.k8s.io) itself; a class may not declare it.
// The shipped ValidatingAdmissionPolicy enforces the same on the API server
// for every write by the driver's service account.

// AllowedTypes are the Secret types a class may sync. An empty type is
// Opaque.
var AllowedTypes = []corev1.SecretType{
	corev1.SecretTypeOpaque,
	corev1.SecretTypeTLS,
	corev1.SecretTypeDockerConfigJson,
	corev1.SecretTypeDockercfg,
	corev1.SecretTypeBasicAuth,
	corev1.SecretTypeSSHAuth,
}

// reservedDomains: a key whose prefix is one of these, or a subdomain of
// one, is refused.
var reservedDomains = []string{"kubernetes.io", "k8s.io"}

// reservedKey reports whether a label or annotation key is in a reserved
// domain. Annotation keys are validated in lower case by the API server,
// so the prefix is compared without regard to case.
func reservedKey(key string) bool {
	prefix, _, ok := strings.Cut(key, "/")
	if !ok {
		return false
	}
	prefix = strings.ToLower(prefix)
	for _, d := range reservedDomains {
		if prefix == d || strings.HasSuffix(prefix, "."+d) {
			return true
		}
	}
	return false
}

// checkPolicy returns one error per thing the entry asks for that a class
// may not: its type, and each reserved label and annotation key (in sorted
// order). Errors name the key, never its value.
func checkPolicy(name string, typ corev1.SecretType, labels, annotations map[string]string) []error {
	var errs []error
	if !slices.Contains(AllowedTypes, typ) {
		errs = append(errs, &buildError{secret: name, refused: true, msg: fmt.Sprintf(
			"type %q is not allowed: a class may sync only types %s (a Secret the cluster acts on, such as a service-account token, is never written for a class)", clip(string(typ)), typeList())})
	}
	for _, kind := range []struct {
		what string
		m    map[string]string
	}{{"label", labels}, {"annotation", annotations}} {
		for _, k := range slices.Sorted(maps.Keys(kind.m)) {
			if reservedKey(k) {
				errs = append(errs, &buildError{secret: name, refused: true, msg: fmt.Sprintf(
					"%s key %q is refused: keys in the domains kubernetes.io and k8s.io (and their subdomains) are the cluster's; the driver sets %s itself", kind.what, clip(k), ManagedLabel)})
			}
		}
	}
	return errs
}

func typeList() string {
	s := make([]string, len(AllowedTypes))
	for i, t := range AllowedTypes {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}

// checkMeta refuses label and annotation keys and label values the API
// server would refuse, so the class's author sees why (values are not
// quoted: a value is never echoed).
func checkMeta(name string, labels, annotations map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			return &buildError{secret: name, msg: fmt.Sprintf("label key %q is not valid: %s", clip(k), strings.Join(msgs, "; "))}
		}
		if msgs := validation.IsValidLabelValue(labels[k]); len(msgs) > 0 {
			return &buildError{secret: name, msg: fmt.Sprintf("the value of label %q is not a valid label value (at most 63 characters: letters, digits, '-', '_', '.')", clip(k))}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(annotations)) {
		if msgs := validation.IsQualifiedName(strings.ToLower(k)); len(msgs) > 0 {
			return &buildError{secret: name, msg: fmt.Sprintf("annotation key %q is not valid: %s", clip(k), strings.Join(msgs, "; "))}
		}
	}
	return nil
}
