package kubernetes

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/secretfs/secretfs/provider"
)

func TestParseObjectsSpellings(t *testing.T) {
	plain := "- secretName: db\n  key: password\n  path: creds/pw\n  filePermission: \"0400\"\n- secretName: tls\n  optional: true\n"
	azure := "array:\n  - |\n    secretName: db\n    key: password\n    path: creds/pw\n    filePermission: \"0400\"\n  - |\n    secretName: tls\n    optional: true\n"
	for name, in := range map[string]string{"plain": plain, "azure": azure} {
		specs, err := parseObjects(in, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(specs) != 2 {
			t.Fatalf("%s: got %d objects", name, len(specs))
		}
		if s := specs[0]; s.SecretName != "db" || s.Key != "password" || s.filePath("password") != "creds/pw" || s.mode != 0o400 {
			t.Errorf("%s: first object %+v", name, s)
		}
		if s := specs[1]; !s.Optional || s.mode != provider.DefaultFileMode || s.filePath("ca.crt") != "ca.crt" {
			t.Errorf("%s: second object %+v", name, s)
		}
	}
}

func TestParseObjectsDefaults(t *testing.T) {
	specs, err := parseObjects("- secretName: a\n  key: k\n- secretName: b\n  path: dir\n", 0o440)
	if err != nil {
		t.Fatal(err)
	}
	if got := specs[0].filePath("k"); got != "k" {
		t.Errorf("key without path: file %q, want the key", got)
	}
	if got := specs[1].filePath("x.pem"); got != "dir/x.pem" {
		t.Errorf("all keys with path: file %q, want dir/x.pem", got)
	}
	if specs[0].mode != 0o440 {
		t.Errorf("mode %o, want the request default 0440", specs[0].mode)
	}
}

func TestParseObjectsRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty list":         "[]",
		"no secretName":      "- key: a\n",
		"upper-case name":    "- secretName: DB\n",
		"name with slash":    "- secretName: a/b\n",
		"key with slash":     "- secretName: a\n  key: x/y\n",
		"key dot-dot":        "- secretName: a\n  key: ..\n",
		"absolute path":      "- secretName: a\n  path: /etc/passwd\n",
		"escaping path":      "- secretName: a\n  path: x/../../y\n",
		"reserved path":      "- secretName: a\n  path: ..data\n",
		"unclean path":       "- secretName: a\n  path: a//b\n",
		"mode not octal":     "- secretName: a\n  filePermission: \"0999\"\n",
		"mode too big":       "- secretName: a\n  filePermission: \"01777\"\n",
		"namespace field":    "- secretName: a\n  namespace: kube-system\n",
		"unknown field":      "- secretName: a\n  keys: b\n",
		"optional not bool":  "- secretName: a\n  optional: maybe\n",
		"name and selector":  "- secretName: a\n  labelSelector: app=x\n",
		"selector with key":  "- labelSelector: app=x\n  key: k\n",
		"selector optional":  "- labelSelector: app=x\n  optional: true\n",
		"selector syntax":    "- labelSelector: \"app in (x\"\n",
		"selector bad key":   "- labelSelector: \"-app=x\"\n",
		"selector too long":  "- labelSelector: app=" + strings.Repeat("x", maxSelectorLen) + "\n",
		"selects everything": "- labelSelector: \" \"\n",
		"selector bad path":  "- labelSelector: app=x\n  path: ../y\n",
	} {
		_, err := parseObjects(in, 0)
		if provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%s: want InvalidArgument, got %v", name, err)
		}
	}
}

func TestParseSelectorNormalized(t *testing.T) {
	specs, err := parseObjects("- labelSelector: \"tier in (db, cache), app=shop\"\n  path: sel\n  filePermission: \"0400\"\n- labelSelector: app=shop,tier in (cache,db)\n  path: again\n", 0)
	if err != nil {
		t.Fatal(err)
	}
	if specs[0].selector != "app=shop,tier in (cache,db)" || specs[1].selector != specs[0].selector {
		t.Errorf("selectors %q and %q, want one normalized form", specs[0].selector, specs[1].selector)
	}
	if got := selectors(specs); len(got) != 1 {
		t.Errorf("distinct selectors %q, want one", got)
	}
	if got := secretNames(specs); len(got) != 0 {
		t.Errorf("a selector item named Secrets %q", got)
	}
	if got := specs[0].selectedPath("db", "password"); got != "sel/db/password" || specs[0].mode != 0o400 {
		t.Errorf("file %q mode %o, want sel/db/password 0400", got, specs[0].mode)
	}
}

func TestBuildResult(t *testing.T) {
	pod := provider.Pod{Namespace: "ns", ServiceAccount: "sa"}
	secrets := map[string]fetchedSecret{
		"db":   {secret: &corev1.Secret{Data: map[string][]byte{"user": []byte("u"), "pw": {0, 0xff, '\n'}}}},
		"gone": {err: provider.NotFound("Secret ns/gone not found")},
	}
	secrets["db"].secret.ResourceVersion = "7"
	parse := func(in string) []spec {
		specs, err := parseObjects(in, 0)
		if err != nil {
			t.Fatal(err)
		}
		return specs
	}

	res, err := buildResult(pod, parse("- secretName: db\n  path: d\n  filePermission: \"0400\"\n- secretName: gone\n  optional: true\n- secretName: db\n  key: nokey\n  optional: true\n"), secrets, nil, provider.NewBudget(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Files) != 2 || res.Files[0].Path != "d/pw" || string(res.Files[0].Contents) != "\x00\xff\n" || res.Files[0].Mode != os.FileMode(0o400) || res.Files[1].Path != "d/user" {
		t.Errorf("files %+v", res.Files)
	}
	if len(res.Versions) != 2 || res.Versions[0] != (provider.ObjectVersion{ID: "secret/db", Version: "7"}) || res.Versions[1] != (provider.ObjectVersion{ID: "secret/gone"}) {
		t.Errorf("versions %+v", res.Versions)
	}

	_, err = buildResult(pod, parse("- secretName: db\n  key: nokey\n"), secrets, nil, provider.NewBudget(nil))
	if provider.CodeOf(err) != codes.NotFound || !strings.Contains(err.Error(), `no key "nokey"`) || !strings.Contains(err.Error(), "pw, user") {
		t.Errorf("missing key: %v", err)
	}
	_, err = buildResult(pod, parse("- secretName: gone\n"), secrets, nil, provider.NewBudget(nil))
	if provider.CodeOf(err) != codes.NotFound {
		t.Errorf("missing secret: %v", err)
	}
	_, err = buildResult(pod, parse("- secretName: db\n- secretName: db\n  key: pw\n"), secrets, nil, provider.NewBudget(nil))
	if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `file "pw"`) {
		t.Errorf("collision: %v", err)
	}
}

func FuzzParseObjects(f *testing.F) {
	f.Add("- secretName: db\n  key: password\n  path: creds/pw\n  filePermission: \"0400\"\n  optional: true\n")
	f.Add("array:\n  - |\n    secretName: db\n    key: .dockerconfigjson\n")
	f.Add("- secretName: a\n  path: x/../y\n")
	f.Add("- secretName: a.b-c\n  filePermission: \"777\"\n")
	f.Add("[]")
	f.Add("- labelSelector: \"app=shop,tier in (db)\"\n  path: sel\n")
	f.Fuzz(func(t *testing.T, in string) {
		specs, err := parseObjects(in, 0)
		if err != nil {
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("error with code %v: %v", provider.CodeOf(err), err)
			}
			return
		}
		for _, s := range specs {
			if s.selector != "" {
				if _, err := labels.Parse(s.selector); err != nil {
					t.Fatalf("normalized selector %q does not parse: %v", s.selector, err)
				}
				if err := provider.ValidatePath(s.selectedPath("a.b-c", "k.ey")); err != nil {
					t.Fatalf("accepted selector writes an invalid path: %v", err)
				}
				continue
			}
			for _, key := range []string{"k", s.Key} {
				if key == "" {
					continue
				}
				if err := provider.ValidatePath(s.filePath(key)); err != nil {
					t.Fatalf("accepted object writes an invalid path: %v", err)
				}
			}
			if s.mode&^0o777 != 0 {
				t.Fatalf("mode %o has bits beyond 0777", s.mode)
			}
		}
	})
}

// The class's parameters are decoded in the volume's turn among the node's
// computations (Request.Turn), by a fetch and by a watch (before, Watch
// parsed the objects outside turns); a turn that cannot be had fails the call
// with its error before the API server is asked.
func TestFetchDecodesInTurn(t *testing.T) {
	api := httptest.NewTLSServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		t.Errorf("the API server was asked %s before the turn", r.URL.Path)
	}))
	defer api.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	p, err := New(Options{Host: api.URL, CAData: ca})
	if err != nil {
		t.Fatal(err)
	}
	req := &provider.Request{Pod: provider.Pod{Namespace: "team-a", Name: "web", ServiceAccount: "app"},
		Parameters: map[string]string{"objects": "- {secretName: db, path: db}\n"}}
	turns := 0
	req.Turn = func() (func(), error) { turns++; return nil, provider.Errorf(codes.DeadlineExceeded, "no turn") }
	if _, err := p.Fetch(context.Background(), req); provider.CodeOf(err) != codes.DeadlineExceeded || turns != 1 {
		t.Errorf("%v after %d turns, want the turn's error after 1", err, turns)
	}
	// A watch decodes the same parameters: in a turn too.
	turns = 0
	if _, err := p.Watch(req, func() {}); provider.CodeOf(err) != codes.DeadlineExceeded || turns != 1 {
		t.Errorf("watch: %v after %d turns, want the turn's error after 1", err, turns)
	}
}
