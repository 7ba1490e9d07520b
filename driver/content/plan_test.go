package content

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// A class that uses nothing of this package reaches the provider unchanged.
func TestParsePlainClass(t *testing.T) {
	params := map[string]string{"keyvaultName": "kv", "objects": "array:\n  - |\n    objectName: optional-thing\n"}
	p, err := Parse(params, nil)
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
	p, err := Parse(params, nil)
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
	p, err := Parse(params, nil)
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
		if _, err := Parse(params, nil); provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("Parse(%v): %v, want InvalidArgument", params, err)
		}
	}
	_, err := Parse(map[string]string{ParamTemplates: "- path: app.env\n  template: \"a\\n{{ .x \"\n"}, nil)
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
	p, err := Parse(params, nil)
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
	p1, err := Parse(params, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := Parse(params, nil)
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
	if n := testing.AllocsPerRun(100, func() { Parse(params, nil) }); n != 0 {
		t.Errorf("Parse of a plain class: %v allocations", n)
	}
}

// YAML aliases repeat a template without repeating its text; the decoded
// source is held to the 64 KiB of a class (before, 63 KiB of YAML decoded
// to 3.8 MiB of source, whose parse took 336 MiB and 2 s of CPU).
func TestTemplateAliasesCountAtEachUse(t *testing.T) {
	var b strings.Builder
	b.WriteString("- path: a0\n  template: &x '" + strings.Repeat("{{1}}", 60<<10/5) + "'\n")
	b.WriteString("- path: a1\n  template: *x\n")
	_, err := Parse(map[string]string{ParamTemplates: b.String()}, nil)
	if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "YAML aliases count at each use") {
		t.Fatalf("%v, want InvalidArgument counting the aliased source", err)
	}
	// Aliases within the bound are fine.
	if _, err := Parse(map[string]string{ParamTemplates: "- path: a\n  template: &x '{{ .x }}'\n- path: b\n  template: *x\n"}, nil); err != nil {
		t.Fatal(err)
	}
}

// A parse of templates no volume parsed before is a computation over tenant
// input: it waits for its turn on the node like a render.
func TestTemplateParseTakesATurn(t *testing.T) {
	b := budget.New(1 << 20)
	takeEveryTurn(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	src := "- path: turn\n  template: '{{ .x }} " + t.Name() + "'\n"
	_, err := Parse(map[string]string{ParamTemplates: src}, b.Work(ctx, "v1", "team-b", 1<<20, 1000))
	if provider.CodeOf(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "waiting to compute") {
		t.Fatalf("%v, want DeadlineExceeded while every turn is taken", err)
	}
}

// Each optional or key-path object is a backend call of its own at every
// fetch: a class may have at most 64 of them (before, 1,100 optional
// objects cost 80 ms of CPU a publish).
func TestSpecialObjectsBounded(t *testing.T) {
	objects := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "- {objectName: o%d, optional: true}\n", i)
		}
		return b.String()
	}
	if _, err := Parse(map[string]string{"objects": objects(64)}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := Parse(map[string]string{"objects": objects(65)}, nil)
	if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "65 objects set optional or keyPath, at most 64") {
		t.Fatalf("%v, want InvalidArgument naming the bound", err)
	}
}

// The driver's parse of an objects parameter that uses optional or keyPath
// is a computation over tenant input: its nodes are charged to the volume
// before it runs, and it runs in the volume's turn (before, a class of
// 32,500 values parsed on every publish, uncharged: 32 publishes at once
// OOM-killed the driver in its 128 MiB).
func TestObjectsParseChargedAndInTurn(t *testing.T) {
	var b strings.Builder
	b.WriteString("- {objectName: x, optional: true}\n- {objectName: y, value: [")
	b.WriteString(strings.Repeat("a,", 7000) + "a]}\n")
	params := map[string]string{"objects": b.String()}

	w := budget.New(64<<20).Work(context.Background(), "v", "team-a", 4<<20, budget.DefaultMaxSteps)
	defer w.Done()
	_, err := Parse(params, w)
	if provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "needs more than its limit of 4194304 bytes") {
		t.Fatalf("%v, want ResourceExhausted: up to 28,000 nodes are 9 MiB of parse", err)
	}
	w8 := budget.New(64<<20).Work(context.Background(), "v", "team-a", 16<<20, budget.DefaultMaxSteps)
	defer w8.Done()
	if _, err := Parse(params, w8); err != nil {
		t.Fatal(err)
	}
	if got := 16<<20 - w8.Left(); got < 28000*provider.YAMLNodeBytes {
		t.Errorf("charged %d bytes for the parse of up to 28,000 nodes", got)
	}

	// The array form's items are bounded together, and refused before
	// they are parsed.
	bomb := "array:\n  - \"objectName:\\x20x\\noptional:\\x20true\"\n"
	for i := range 8 {
		bomb += fmt.Sprintf("  - \"{objectName:\\x20o%d\\x2cvalue:\\x20[a%s]}\"\n", i, strings.Repeat("\\x2ca", 8000))
	}
	if _, err := Parse(map[string]string{"objects": bomb}, w8); provider.CodeOf(err) != codes.ResourceExhausted ||
		!strings.Contains(err.Error(), "its array items hold more than") {
		t.Fatalf("%v, want ResourceExhausted naming the array items", err)
	}

	// In turn: with every turn taken, the parse waits until the request ends.
	node := budget.New(64 << 20)
	takeEveryTurn(t, node)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	small := map[string]string{"objects": "- {objectName: x, optional: true}\n"}
	if _, err := Parse(small, node.Work(ctx, "v1", "team-b", 1<<20, 1000)); provider.CodeOf(err) != codes.DeadlineExceeded {
		t.Fatalf("%v, want DeadlineExceeded while every turn is taken", err)
	}
}

// takeEveryTurn holds every turn of b's node until the test ends.
func takeEveryTurn(t *testing.T, b *budget.Budget) {
	t.Helper()
	holder := b.Work(context.Background(), "v0", "team-a", 1<<20, 1000)
	for range runtime.GOMAXPROCS(0) {
		end, err := holder.Turn()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(end)
	}
}
