package fake

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

const canary = "s3cr3t-canary" // must never appear in an error

func request(params map[string]string) *provider.Request {
	return &provider.Request{
		Pod:        provider.Pod{Namespace: "default", Name: "app-0", UID: "uid-1", ServiceAccount: "app"},
		Class:      "demo",
		Parameters: params,
	}
}

func objects(yaml string) map[string]string { return map[string]string{"objects": yaml} }

func mustFetch(t *testing.T, f *Fake, req *provider.Request) *provider.Result {
	t.Helper()
	res, err := f.Fetch(context.Background(), req)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	return res
}

func TestObjects(t *testing.T) {
	type file struct {
		path     string
		mode     os.FileMode
		contents string
	}
	for _, tc := range []struct {
		name        string
		objects     string
		defaultMode os.FileMode
		want        []file
	}{
		{"plain list", "- objectName: a\n  value: one\n- objectName: b\n  value: two\n", 0,
			[]file{{"a", 0o644, "one"}, {"b", 0o644, "two"}}},
		{"azure array", "array:\n  - |\n    objectName: a\n    value: one\n  - |\n    objectName: b\n    value: two\n", 0,
			[]file{{"a", 0o644, "one"}, {"b", 0o644, "two"}}},
		{"alias", "- {objectName: a, objectAlias: renamed.txt, value: one}\n", 0, []file{{"renamed.txt", 0o644, "one"}}},
		{"alias in sub-directory", "- {objectName: a, objectAlias: dir/sub/a.pem, value: one}\n", 0, []file{{"dir/sub/a.pem", 0o644, "one"}}},
		{"hidden alias", "- {objectName: a, objectAlias: .env, value: one}\n", 0, []file{{".env", 0o644, "one"}}},
		{"same object twice under two aliases", "- {objectName: a, objectAlias: x, value: one}\n- {objectName: a, objectAlias: 'y', value: one}\n", 0,
			[]file{{"x", 0o644, "one"}, {"y", 0o644, "one"}}},
		{"filePermission 0400", "- {objectName: a, value: one, filePermission: \"0400\"}\n", 0, []file{{"a", 0o400, "one"}}},
		{"filePermission without leading zero", "- {objectName: a, value: one, filePermission: \"640\"}\n", 0, []file{{"a", 0o640, "one"}}},
		{"filePermission 0000 is kept", "- {objectName: a, value: one, filePermission: \"0000\"}\n", 0o600, []file{{"a", 0, "one"}}},
		{"request default mode", "- {objectName: a, value: one}\n", 0o440, []file{{"a", 0o440, "one"}}},
		{"object mode beats default", "- {objectName: a, value: one, filePermission: \"0600\"}\n", 0o440, []file{{"a", 0o600, "one"}}},
		{"empty value", "- {objectName: a, value: \"\"}\n", 0, []file{{"a", 0o644, ""}}},
		{"multi-line value", "- objectName: a\n  value: |\n    line1\n    line2\n", 0, []file{{"a", 0o644, "line1\nline2\n"}}},
		{"base64 value", "- {objectName: a, value: AAEC/w==, objectEncoding: base64}\n", 0, []file{{"a", 0o644, "\x00\x01\x02\xff"}}},
		{"hex value", "- {objectName: a, value: 00ff, objectEncoding: HEX}\n", 0, []file{{"a", 0o644, "\x00\xff"}}},
		{"utf-8 value", "- {objectName: a, value: héllo, objectEncoding: utf-8}\n", 0, []file{{"a", 0o644, "héllo"}}},
		{"objectVersion with value", "- {objectName: a, value: one, objectVersion: v2}\n", 0, []file{{"a", 0o644, "one"}}},
		{"generate quoted", "- {objectName: a, generate: \"12\"}\n", 0, []file{{"a", 0o644, string(generate("default", "a", "", "", 12))}}},
		{"generated", "- {objectName: a, generate: 12, seed: s, objectVersion: v1}\n", 0,
			[]file{{"a", 0o644, string(generate("default", "a", "v1", "s", 12))}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := request(objects(tc.objects))
			req.DefaultMode = tc.defaultMode
			res := mustFetch(t, New(Options{}), req)
			if len(res.Files) != len(tc.want) || len(res.Versions) != len(tc.want) {
				t.Fatalf("got %d files, %d versions; want %d", len(res.Files), len(res.Versions), len(tc.want))
			}
			for i, w := range tc.want {
				got := res.Files[i]
				if got.Path != w.path || got.Mode != w.mode || string(got.Contents) != w.contents {
					t.Errorf("file %d = {%s %o %q}, want {%s %o %q}", i, got.Path, got.Mode, got.Contents, w.path, w.mode, w.contents)
				}
				if res.Versions[i].ID != w.path {
					t.Errorf("version %d ID = %q, want %q", i, res.Versions[i].ID, w.path)
				}
			}
		})
	}
}

func TestInvalidParameters(t *testing.T) {
	obj := func(fields string) map[string]string {
		return objects("- {objectName: ok, value: " + canary + "}\n- {" + fields + "}\n")
	}
	withObj := func(k, v string) map[string]string {
		p := objects("- {objectName: a, value: " + canary + "}\n")
		p[k] = v
		return p
	}
	long := strings.Repeat("x", 128)
	for _, tc := range []struct {
		name   string
		params map[string]string
		want   []string // substrings of the message
	}{
		{"objects missing", map[string]string{"latency": "1s"}, []string{"objects is missing"}},
		{"objects empty", objects(" "), []string{"objects is empty"}},
		{"objects empty list", objects("[]"), []string{"no objects"}},
		{"objects empty array", objects("array: []"), []string{"no objects"}},
		{"objects not a list", objects("objectName: a"), []string{"must be a list"}},
		{"unknown object field", objects("- {objectName: a, valeu: x}\n"), []string{"objects[0]", `"valeu"`, "known fields"}},
		{"objectName missing", obj("value: x"), []string{"objects[1]", "objectName is required"}},
		{"objectName with slash", obj("objectName: a/b, value: x"), []string{"objects[1]", "objectName"}},
		{"objectName dot-dot", obj("objectName: .., value: x"), []string{"objects[1]", "objectName"}},
		{"objectName traversal", obj("objectName: ../etc/passwd, value: x"), []string{"objects[1]", "objectName"}},
		{"objectName hidden", obj("objectName: .a, value: x"), []string{"objects[1]", "objectName"}},
		{"objectName space", obj("objectName: 'a b', value: x"), []string{"objects[1]", "objectName"}},
		{"objectName too long", obj("objectName: " + long + ", value: x"), []string{"objects[1]", "objectName", "127"}},
		{"objectName not a string", obj("objectName: [a], value: x"), []string{"objects[1]", "objectName", "list"}},
		{"alias absolute", obj("objectName: b, objectAlias: /etc/passwd, value: x"), []string{"objects[1] (b)", "objectAlias", "relative"}},
		{"alias dot-dot", obj("objectName: b, objectAlias: ../../etc/passwd, value: x"), []string{"objects[1] (b)", "objectAlias", "'..'"}},
		{"alias dot-dot inside", obj("objectName: b, objectAlias: a/../../b, value: x"), []string{"objects[1] (b)", "objectAlias"}},
		{"alias dot", obj("objectName: b, objectAlias: ./b, value: x"), []string{"objects[1] (b)", "objectAlias"}},
		{"alias empty component", obj("objectName: b, objectAlias: a//b, value: x"), []string{"objects[1] (b)", "objectAlias", "empty"}},
		{"alias trailing slash", obj("objectName: b, objectAlias: a/, value: x"), []string{"objects[1] (b)", "objectAlias"}},
		{"alias reserved", obj("objectName: b, objectAlias: ..data, value: x"), []string{"objects[1] (b)", "objectAlias", "reserved"}},
		{"alias reserved nested", obj("objectName: b, objectAlias: d/..x, value: x"), []string{"objects[1] (b)", "objectAlias", "reserved"}},
		{"alias backslash", obj(`objectName: b, objectAlias: 'a\b', value: x`), []string{"objects[1] (b)", "objectAlias"}},
		{"alias too long", obj("objectName: b, objectAlias: " + strings.Repeat("a/", 600) + "a, value: x"), []string{"objects[1] (b)", "objectAlias", "1024"}},
		{"alias component too long", obj("objectName: b, objectAlias: " + strings.Repeat("a", 256) + ", value: x"), []string{"objects[1] (b)", "objectAlias", "255"}},
		{"duplicate name", obj("objectName: ok, value: x"), []string{"objects[1] (ok)", "already used by objects[0]"}},
		{"duplicate alias", obj("objectName: b, objectAlias: ok, value: x"), []string{"objects[1] (b)", "already used by objects[0]"}},
		{"file is a directory", obj("objectName: b, objectAlias: ok/b, value: x"), []string{"objects[0] (ok)", "directory"}},
		{"filePermission 0o", obj("objectName: b, filePermission: '0o644', value: x"), []string{"objects[1] (b)", "filePermission", "octal"}},
		{"filePermission 8", obj("objectName: b, filePermission: '0648', value: x"), []string{"objects[1] (b)", "filePermission"}},
		{"filePermission setuid", obj("objectName: b, filePermission: '4755', value: x"), []string{"objects[1] (b)", "filePermission", "0777"}},
		{"filePermission too long", obj("objectName: b, filePermission: '00644', value: x"), []string{"objects[1] (b)", "filePermission"}},
		{"filePermission negative", obj("objectName: b, filePermission: '-644', value: x"), []string{"objects[1] (b)", "filePermission"}},
		{"value map", obj("objectName: b, value: {k: v}"), []string{"objects[1]", "value", "map"}},
		{"item not a map", objects("- just-a-name\n"), []string{"objects[0]", "must be a map"}},
		{"generate fraction", obj("objectName: b, generate: 1.5"), []string{"objects[1] (b)", "generate"}},
		{"value and generate", obj("objectName: b, value: " + canary + ", generate: 3"), []string{"objects[1] (b)", "either value or generate"}},
		{"seed without generate", obj("objectName: b, value: x, seed: s"), []string{"objects[1] (b)", "seed"}},
		{"encoding without value", obj("objectName: b, generate: 3, objectEncoding: base64"), []string{"objects[1] (b)", "objectEncoding"}},
		{"bad base64", obj("objectName: b, value: '" + canary + "!', objectEncoding: base64"), []string{"objects[1] (b)", "value", "base64"}},
		{"bad hex", obj("objectName: b, value: " + canary + ", objectEncoding: hex"), []string{"objects[1] (b)", "value", "hex"}},
		{"unknown encoding", obj("objectName: b, value: " + canary + ", objectEncoding: rot13"), []string{"objects[1] (b)", "rot13"}},
		{"generate zero", obj("objectName: b, generate: 0"), []string{"objects[1] (b)", "generate"}},
		{"generate negative", obj("objectName: b, generate: -1"), []string{"objects[1] (b)", "generate"}},
		{"generate too big", obj("objectName: b, generate: 65537"), []string{"objects[1] (b)", "generate", "65536"}},
		{"generate not a number", obj("objectName: b, generate: lots"), []string{"generate"}},
		{"objectVersion bad", obj("objectName: b, value: x, objectVersion: a/b"), []string{"objects[1] (b)", "objectVersion"}},
		{"too many objects", objects(strings.Repeat("- {objectName: a}\n", maxObjects+1)), []string{"1025 objects"}},
		{"latency not a duration", withObj("latency", "soon"), []string{"latency"}},
		{"latency negative", withObj("latency", "-1s"), []string{"latency"}},
		{"latency too long", withObj("latency", "11m"), []string{"latency"}},
		{"failFirst not a number", withObj("failFirst", "some"), []string{"failFirst"}},
		{"failFirst negative", withObj("failFirst", "-1"), []string{"failFirst"}},
		{"failCode OK", map[string]string{"objects": "- {objectName: a, value: x}", "failFirst": "1", "failCode": "OK"}, []string{"failCode"}},
		{"failCode unknown", map[string]string{"objects": "- {objectName: a, value: x}", "failFirst": "1", "failCode": "Teapot"}, []string{"failCode"}},
		{"failCode alone", withObj("failCode", "Unavailable"), []string{"failCode", "failFirst"}},
		{"deny bad name", withObj("deny", "app,Bad_Name"), []string{"deny", "Bad_Name"}},
		{"rateLimit zero", withObj("rateLimit", "0"), []string{"rateLimit"}},
		{"rateLimit negative", withObj("rateLimit", "-2"), []string{"rateLimit"}},
		{"rateLimit NaN", withObj("rateLimit", "NaN"), []string{"rateLimit"}},
		{"rateLimit Inf", withObj("rateLimit", "+Inf"), []string{"rateLimit"}},
		{"rateLimit words", withObj("rateLimit", "fast"), []string{"rateLimit"}},
		{"unknown parameter", withObj("failfirst", "1"), []string{`"failfirst"`, "failFirst"}},
		{"dataDir is not a parameter", withObj("dataDir", "/etc"), []string{`"dataDir"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New(Options{})
			_, err := f.Fetch(context.Background(), request(tc.params))
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("got %v (%v), want InvalidArgument", provider.CodeOf(err), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), canary) {
				t.Errorf("message %q contains the secret value", err)
			}
			if f.Calls() != 1 {
				t.Errorf("Calls = %d, want 1", f.Calls())
			}
		})
	}
}

func TestInvalidNamespace(t *testing.T) {
	for _, ns := range []string{"", "..", ".", "../etc", "a/b", "Default", "-a", "a-", strings.Repeat("a", 64), "a\x00b"} {
		req := request(objects("- {objectName: a, value: x}"))
		req.Pod.Namespace = ns
		_, err := New(Options{}).Fetch(context.Background(), req)
		if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "namespace") {
			t.Errorf("namespace %q: got %v, want InvalidArgument naming the namespace", ns, err)
		}
	}
	if _, err := New(Options{}).Fetch(context.Background(), nil); provider.CodeOf(err) != codes.InvalidArgument {
		t.Errorf("nil request: got %v", err)
	}
}

// The keys kubelet and the Secrets Store CSI Driver add to the parameters
// are not objects and change nothing: the result is the class's one object,
// the same as without them.
func TestIgnoredDriverParameters(t *testing.T) {
	p := objects("- {objectName: a, value: x}")
	p["csi.storage.k8s.io/pod.name"] = "app-0"
	p["secrets-store.csi.k8s.io/usePodIdentity"] = "false"
	res := mustFetch(t, New(Options{}), request(p))
	if len(res.Files) != 1 || res.Files[0].Path != "a" || res.Files[0].Mode != 0o644 || string(res.Files[0].Contents) != "x" {
		t.Fatalf("files %+v, want only a (0644) = x", res.Files)
	}
	plain := mustFetch(t, New(Options{}), request(objects("- {objectName: a, value: x}")))
	if !reflect.DeepEqual(res, plain) {
		t.Errorf("driver parameters changed the result:\n%+v\nwithout them:\n%+v", res, plain)
	}
}

func TestCodeByName(t *testing.T) {
	for name, want := range map[string]codes.Code{
		"Unavailable": codes.Unavailable, "unavailable": codes.Unavailable, "PERMISSION_DENIED": codes.PermissionDenied,
		"PermissionDenied": codes.PermissionDenied, "NotFound": codes.NotFound, "DeadlineExceeded": codes.DeadlineExceeded,
		"Unauthenticated": codes.Unauthenticated, "Canceled": codes.Canceled,
	} {
		if got, ok := codeByName(name); !ok || got != want {
			t.Errorf("codeByName(%q) = %v, %v; want %v", name, got, ok, want)
		}
	}
	for _, name := range []string{"OK", "", "Code(42)", "Teapot"} {
		if _, ok := codeByName(name); ok {
			t.Errorf("codeByName(%q) accepted", name)
		}
	}
}

// Scalars are taken as written, as the Azure provider does: an unquoted
// 0640 is the mode 0640, not the YAML 1.1 number 416.
func TestUnquotedScalarsAsWritten(t *testing.T) {
	res := mustFetch(t, New(Options{}), request(objects("array:\n  - |\n    objectName: b\n    value: yes\n    filePermission: 0640\n")))
	if len(res.Files) != 1 || res.Files[0].Mode != 0o640 || string(res.Files[0].Contents) != "yes" {
		t.Fatalf("got %+v", res.Files)
	}
}
