package content

import (
	"context"
	"reflect"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// A class that uses nothing of this package reaches the provider unchanged.
func TestParsePlainClass(t *testing.T) {
	params := map[string]string{"keyvaultName": "kv", "objects": "array:\n  - |\n    objectName: optional-thing\n"}
	p, err := Parse(params)
	if err != nil || p != nil {
		t.Fatalf("a plain class has a plan: %v %v", p, err)
	}
	if reflect.ValueOf(p.Parameters(params)).Pointer() != reflect.ValueOf(params).Pointer() {
		t.Error("parameters were copied for a class that needs no change")
	}
	if p.Shapes() {
		t.Error("plain class shapes its files")
	}
}

func TestParseStripsOwnParameters(t *testing.T) {
	params := map[string]string{
		"objects":                   "- objectName: a\n  optional: true\n- objectName: b\n  keyPath: db.password\n- objectName: c\n",
		ParamTemplates:              "- path: app.env\n  mode: \"0400\"\n  template: \"A={{ .a }}\"\n",
		ParamHideObjects:            "true",
		class.ParamRotationInterval: "10s",
		class.ParamStaleIfError:     "5m",
		class.ParamNodeCache:        "false",
		"csi.storage.k8s.io/x":      "kept",
	}
	p, err := Parse(params)
	if err != nil {
		t.Fatal(err)
	}
	got := p.Parameters(nil)
	for k := range got {
		if strings.HasPrefix(k, Prefix) {
			t.Errorf("parameter %s reaches the provider", k)
		}
	}
	if strings.Contains(got["objects"], "optional") || strings.Contains(got["objects"], "keyPath") {
		t.Errorf("objects still carry our fields: %s", got["objects"])
	}
	var objs []map[string]string
	if err := yaml.Unmarshal([]byte(got["objects"]), &objs); err != nil || len(objs) != 3 || objs[1]["objectName"] != "b" {
		t.Errorf("objects: %v %v", objs, err)
	}
	if params[ParamTemplates] == "" || !strings.Contains(params["objects"], "optional") {
		t.Error("the class's own map was modified")
	}
}

// The Azure spelling (array of YAML documents) stays the Azure spelling.
func TestParseAzureSpelling(t *testing.T) {
	params := map[string]string{"objects": "array:\n  - |\n    objectName: a\n    objectType: secret\n    optional: true\n  - |\n    objectName: b\n"}
	p, err := Parse(params)
	if err != nil {
		t.Fatal(err)
	}
	type azureObject struct {
		ObjectName string `yaml:"objectName"`
		ObjectType string `yaml:"objectType"`
	}
	var objs []azureObject
	if err := provider.DecodeObjects(p.Parameters(nil)["objects"], &objs); err != nil || len(objs) != 2 || objs[0].ObjectType != "secret" {
		t.Fatalf("rewritten objects %q: %v %v", p.Parameters(nil)["objects"], objs, err)
	}
	if !strings.HasPrefix(p.Parameters(nil)["objects"], "array:") {
		t.Errorf("spelling changed: %s", p.Parameters(nil)["objects"])
	}
}

func TestParseErrors(t *testing.T) {
	cases := []map[string]string{
		{Prefix + "template": "x"},
		{ParamHideObjects: "true"},
		{ParamHideObjects: "yes please"},
		{ParamTemplates: "- path: a\n  template: \"{{ .x \"\n"},
		{ParamTemplates: "- path: a\n  template: x\n- path: a\n  template: y\n"},
		{ParamTemplates: "- path: a\n  tmpl: x\n"},
		{ParamTemplates: "- path: a\n  mode: \"999\"\n  template: x\n"},
		{ParamTemplates: "[]"},
		{"objects": "- objectName: a\n  optional: maybe\n"},
		{"objects": "- objectName: a\n  keyPath: a..b\n"},
		{"objects": "- labelSelector: app=x\n  optional: true\n"},
		{"objects": "array:\n  - |\n    objectType: secret\n    objectNamePrefix: a-\n    keyPath: x\n"},
		{"objects": "- {objectType: secret, objectTags: {a: b}, optional: false, keyPath: x}\n"},
	}
	for _, params := range cases {
		if _, err := Parse(params); provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("Parse(%v): %v, want InvalidArgument", params, err)
		}
	}
	_, err := Parse(map[string]string{ParamTemplates: "- path: app.env\n  template: \"a\\n{{ .x \"\n"})
	if err == nil || !strings.Contains(err.Error(), `"app.env"`) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("template parse error does not name template and line: %v", err)
	}
}

// backend serves objects by objectName from values; "denied" is refused.
type backend struct {
	values map[string]string
	calls  int
	seen   []string
}

func (b *backend) fetch(_ context.Context, req *provider.Request) (*provider.Result, error) {
	b.calls++
	b.seen = append(b.seen, req.Parameters["objects"])
	var objs []struct {
		ObjectName  string `yaml:"objectName"`
		ObjectAlias string `yaml:"objectAlias"`
	}
	if err := provider.DecodeObjects(req.Parameters["objects"], &objs); err != nil {
		return nil, err
	}
	res := &provider.Result{}
	for _, o := range objs {
		name := o.ObjectName
		if name == "denied" {
			return nil, provider.PermissionDenied("no access to %s", name)
		}
		v, ok := b.values[name]
		if !ok {
			return nil, provider.NotFound("object %s not found", name)
		}
		path := name
		if o.ObjectAlias != "" {
			path = o.ObjectAlias
		}
		res.Files = append(res.Files, provider.File{Path: path, Contents: []byte(v)})
		res.Versions = append(res.Versions, provider.ObjectVersion{ID: name, Version: "1"})
	}
	return res, nil
}

func fetchAndRender(t *testing.T, params map[string]string, b *backend) (*Output, error) {
	t.Helper()
	p, err := Parse(params)
	if err != nil {
		t.Fatal(err)
	}
	req := &provider.Request{Parameters: p.Parameters(nil)}
	res, err := p.Fetch(context.Background(), req, work(1<<20), b.fetch)
	if err != nil {
		return nil, err
	}
	return p.Render(res, work(1<<20), 0o644)
}

func TestFetchOptionalAndKeyPath(t *testing.T) {
	b := &backend{values: map[string]string{"db": `{"user":"app","password":"pw"}`, "plain": "p", "plain2": "q"}}
	out, err := fetchAndRender(t, map[string]string{
		"objects": "- objectName: plain\n- objectName: gone\n  optional: true\n" +
			"- objectName: db\n  objectAlias: password\n  keyPath: password\n- objectName: plain2\n",
		ParamTemplates: "- path: app.env\n  template: |\n    USER={{ index . \"password\" }}\n    GONE={{ index . \"gone\" }}\n",
	}, b)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, f := range out.Files {
		files[f.Path] = string(f.Contents)
	}
	want := map[string]string{"plain": "p", "plain2": "q", "password": "pw", "app.env": "USER=pw\nGONE=\n"}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("files %v, want %v", files, want)
	}
	if len(out.Missing) != 1 || !strings.Contains(out.Missing[0], `"gone"`) {
		t.Errorf("missing %v", out.Missing)
	}
	for _, v := range out.Versions {
		if strings.HasPrefix(v.ID, Prefix) {
			t.Errorf("marker version %v left in the output", v)
		}
	}
	if b.calls != 3 { // plain+plain2, gone, db
		t.Errorf("%d backend calls, want 3", b.calls)
	}
	for _, s := range b.seen {
		if strings.Contains(s, "optional") || strings.Contains(s, "keyPath") {
			t.Errorf("backend saw our fields: %s", s)
		}
	}
}

func TestFetchFailures(t *testing.T) {
	b := &backend{values: map[string]string{"db": `{"user":"app"}`, "text": "not: [json"}}
	cases := []struct {
		objects string
		code    codes.Code
		name    string
	}{
		{"- objectName: denied\n  optional: true\n", codes.PermissionDenied, "denied"},
		{"- objectName: gone\n- objectName: db\n  optional: true\n", codes.NotFound, ""},
		{"- objectName: db\n  keyPath: password\n", codes.NotFound, `"db"`},
		{"- objectName: text\n  keyPath: a\n", codes.InvalidArgument, `"text"`},
	}
	for _, c := range cases {
		_, err := fetchAndRender(t, map[string]string{"objects": c.objects}, b)
		if provider.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%q: %v, want %v naming %s", c.objects, err, c.code, c.name)
		}
	}
	// An optional object whose key is missing is left out too.
	out, err := fetchAndRender(t, map[string]string{"objects": "- objectName: db\n  keyPath: password\n  optional: true\n"}, b)
	if err != nil || len(out.Files) != 0 || len(out.Missing) != 1 {
		t.Errorf("optional object with a missing key: %v %v", out, err)
	}
}

func TestRenderHideObjects(t *testing.T) {
	b := &backend{values: map[string]string{"a": "1", "b": "2"}}
	out, err := fetchAndRender(t, map[string]string{
		"objects":        "- objectName: a\n- objectName: b\n",
		ParamTemplates:   "- path: conf/app.env\n  mode: \"0400\"\n  template: \"A={{ .a }} B={{ .b }}\"\n",
		ParamHideObjects: "true",
	}, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Files) != 1 || out.Files[0].Path != "conf/app.env" || string(out.Files[0].Contents) != "A=1 B=2" || out.Files[0].Mode != 0o400 {
		t.Errorf("files %+v", out.Files)
	}
	if b.calls != 1 {
		t.Errorf("%d backend calls for a class without optional or keyPath objects", b.calls)
	}
	_, err = fetchAndRender(t, map[string]string{"objects": "- objectName: a\n", ParamTemplates: "- path: a\n  template: x\n"}, b)
	if provider.CodeOf(err) != codes.InvalidArgument {
		t.Errorf("template over an object's path: %v", err)
	}
}

// One class's parsed templates serve concurrent volumes.
func TestRenderConcurrent(t *testing.T) {
	params := map[string]string{"objects": "- objectName: a\n", ParamTemplates: "- path: t\n  template: \"{{ range 3 }}{{ $.a | base64 }}{{ end }}\"\n"}
	p1, err := Parse(params)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := Parse(params)
	if p1.templates[0] != p2.templates[0] {
		t.Error("the same templates were parsed twice")
	}
	done := make(chan error)
	for i := range 8 {
		go func() {
			v := strings.Repeat("x", i)
			out, err := p1.Render(&provider.Result{Files: []provider.File{{Path: "a", Contents: []byte(v)}}}, work(1<<20), 0o644)
			if err == nil && len(out.Files) != 2 {
				err = context.Canceled
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// A class without any of this package's settings costs no allocation.
func TestParsePlainAllocates(t *testing.T) {
	params := map[string]string{"keyvaultName": "kv", "objects": "array:\n  - |\n    objectName: a\n"}
	if n := testing.AllocsPerRun(100, func() { Parse(params) }); n != 0 {
		t.Errorf("Parse of a plain class: %v allocations", n)
	}
}
