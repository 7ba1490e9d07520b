package secretsync

import (
	"strings"
	"testing"

	"github.com/secretfs/secretfs/driver/class"
)

// A class is tenant input: it may not make the driver write a Secret the
// cluster itself acts on (a service-account token the token controller
// fills in), nor labels or annotations in the kubernetes.io and k8s.io
// domains. Each refusal names the entry and the key, never a value.
func TestBuildRefusesClusterTypesAndKeys(t *testing.T) {
	data := []class.SecretObjectData{{ObjectName: "a", Key: "k"}}
	for _, tc := range []struct {
		name string
		obj  class.SecretObject
		want []string // one error each
	}{
		{"service-account token", class.SecretObject{SecretName: "tok", Type: "kubernetes.io/service-account-token",
			Annotations: map[string]string{"kubernetes.io/service-account.name": "admin"}, Data: data},
			[]string{`type "kubernetes.io/service-account-token" is not allowed`, `annotation key "kubernetes.io/service-account.name"`}},
		{"bootstrap token", class.SecretObject{SecretName: "boot", Type: "bootstrap.kubernetes.io/token", Data: data},
			[]string{`type "bootstrap.kubernetes.io/token" is not allowed`}},
		{"made-up type", class.SecretObject{SecretName: "x", Type: "example.com/thing", Data: data},
			[]string{`type "example.com/thing" is not allowed`}},
		{"label under kubernetes.io", class.SecretObject{SecretName: "l", Labels: map[string]string{"kubernetes.io/metadata.name": "v"}, Data: data},
			[]string{`label key "kubernetes.io/metadata.name"`}},
		{"label under a subdomain of k8s.io", class.SecretObject{SecretName: "l", Labels: map[string]string{"x.k8s.io/a": "v", "node-role.kubernetes.io/b": "v"}, Data: data},
			[]string{`label key "node-role.kubernetes.io/b"`, `label key "x.k8s.io/a"`}},
		{"the managed label, declared by the class", class.SecretObject{SecretName: "l", Labels: map[string]string{ManagedLabel: "true"}, Data: data},
			[]string{`label key "` + ManagedLabel + `"`}},
		{"annotation, any case", class.SecretObject{SecretName: "a", Annotations: map[string]string{"Kubernetes.IO/service-account.uid": "u"}, Data: data},
			[]string{`annotation key "Kubernetes.IO/service-account.uid"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, errs := build([]class.SecretObject{tc.obj}, files("a", "x"))
			if len(ds) != 0 {
				t.Fatalf("built %d Secrets; the entry must not be written", len(ds))
			}
			if len(errs) != len(tc.want) {
				t.Fatalf("errors %q, want %d", errs, len(tc.want))
			}
			for i, w := range tc.want {
				msg := errs[i].Error()
				if !strings.Contains(msg, w) || !strings.Contains(msg, `Secret "`+tc.obj.SecretName+`"`) {
					t.Errorf("error %q, want it to name the entry and %s", msg, w)
				}
				for _, v := range []string{"admin", `"v"`, `"u"`} {
					if strings.Contains(msg, v) {
						t.Errorf("error %q carries a value", msg)
					}
				}
			}
		})
	}
}

// Types and keys outside the reserved domains are accepted, as are keys
// that only look alike (notkubernetes.io, k8s.io.example.com).
func TestBuildAllowsTypesAndKeys(t *testing.T) {
	data := []class.SecretObjectData{{ObjectName: "a", Key: "k"}}
	for _, typ := range []string{"", "Opaque", "kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg", "kubernetes.io/basic-auth", "kubernetes.io/ssh-auth"} {
		ds, errs := build([]class.SecretObject{{SecretName: "s", Type: typ, Data: data,
			Labels:      map[string]string{"app": "x", "notkubernetes.io/a": "b", "k8s.io.example.com/c": "d"},
			Annotations: map[string]string{"example.com/kubernetes.io": "e", "kubernetes.io": "plain name, no prefix"}}}, files("a", "x"))
		if len(errs) != 0 || len(ds) != 1 {
			t.Errorf("type %q: %v", typ, errs)
		}
	}
}

func TestReservedKey(t *testing.T) {
	for key, want := range map[string]bool{
		"kubernetes.io/x": true, "k8s.io/x": true, "a.b.kubernetes.io/x": true, "csi.k8s.io/x": true, "K8S.IO/x": true,
		"kubernetes.io": false, "x": false, "example.com/x": false, "xkubernetes.io/x": false, "kubernetes.io.evil.com/x": false,
		"/x": false,
	} {
		if got := reservedKey(key); got != want {
			t.Errorf("reservedKey(%q) = %v, want %v", key, got, want)
		}
	}
}

// reservedKey agrees with a plain reading of the rule for any key: the
// prefix, split into DNS labels and lower-cased, ends in kubernetes.io or
// k8s.io.
func FuzzReservedKey(f *testing.F) {
	for _, s := range []string{"kubernetes.io/x", "a.k8s.io/b", "k8s.io", "xk8s.io/y", "KUBERNETES.IO/z", "/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		want := false
		if i := strings.IndexByte(key, '/'); i >= 0 {
			labels := strings.Split(strings.ToLower(key[:i]), ".")
			n := len(labels)
			want = n >= 2 && labels[n-1] == "io" && (labels[n-2] == "kubernetes" || labels[n-2] == "k8s")
		}
		if got := reservedKey(key); got != want {
			t.Fatalf("reservedKey(%q) = %v, want %v", key, got, want)
		}
	})
}
