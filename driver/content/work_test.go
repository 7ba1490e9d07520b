package content

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// allocated runs f and returns the bytes it allocated.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// The findings of issue 21, each with the real sizes: the volume's limit is
// the shipped 8 MiB, and the computation may allocate no more than a small
// multiple of it before it is refused.
const shippedVolume = 8 << 20

// A template of a few KiB that prints a MiB-sized value a few hundred times
// made the driver allocate the whole result before anything was charged.
func TestTemplatePrintIsChargedBeforeItIsBuilt(t *testing.T) {
	data := map[string]string{"x": strings.Repeat("x", 1<<20)}
	for _, fn := range []string{"print", "println", "html", "js", "urlquery"} {
		src := "{{ $s := .x }}{{ " + fn + strings.Repeat(" $s", 300) + " }}"
		var err error
		n := allocated(func() { _, err = render(t, src, data, shippedVolume) })
		if provider.CodeOf(err) != codes.ResourceExhausted {
			t.Errorf("%s of 300 MiB: %v, want ResourceExhausted", fn, err)
		}
		if n > 4*shippedVolume {
			t.Errorf("%s of 300 MiB allocated %d MiB before it was refused", fn, n>>20)
		}
	}
	src := `{{ $s := .x }}{{ printf "` + strings.Repeat("%[1]s", 300) + `" $s }}`
	var err error
	n := allocated(func() { _, err = render(t, src, data, shippedVolume) })
	if provider.CodeOf(err) != codes.ResourceExhausted || n > 4*shippedVolume {
		t.Errorf("printf of 300 MiB: %v after %d MiB", err, n>>20)
	}
	// Printing the files whole, in an action or through json, is charged too.
	src = "{{ range 300 }}{{ $ }}{{ json $ }}{{ end }}"
	n = allocated(func() { _, err = render(t, src, data, shippedVolume) })
	if provider.CodeOf(err) != codes.ResourceExhausted || n > 4*shippedVolume {
		t.Errorf("printing the files 300 times: %v after %d MiB", err, n>>20)
	}
}

// Comparing two MiB-sized strings in a loop took a core for as long as the
// loop ran: comparisons are charged by the bytes they compare.
func TestTemplateComparisonsAreCharged(t *testing.T) {
	x := strings.Repeat("x", 1<<20)
	data := map[string]string{"x": x, "y": x}
	for _, op := range []string{"eq", "ne", "lt", "le", "gt", "ge"} {
		src := "{{ range 100000 }}{{ if " + op + " $.x $.y }}{{ end }}{{ end }}"
		start := time.Now()
		_, err := render(t, src, data, shippedVolume)
		if provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), budget.StepsFlag) {
			t.Errorf("%s: %v, want ResourceExhausted naming %s", op, err, budget.StepsFlag)
		}
		t.Logf("%s refused after %v", op, time.Since(start))
	}
}

// A render stops at the request's deadline, and when the request is
// cancelled (an unpublish of the volume, the driver stopping).
func TestTemplateStopsWithItsContext(t *testing.T) {
	tt, steps, err := parseTemplate("t", "{{ range 1000000000 }}{{ end }}")
	if err != nil {
		t.Fatal(err)
	}
	tp := &Template{Path: "t", t: tt, steps: steps}
	for _, c := range []struct {
		ctx  func() (context.Context, context.CancelFunc)
		code codes.Code
	}{
		{func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}, codes.DeadlineExceeded},
		{func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(50*time.Millisecond, cancel)
			return ctx, cancel
		}, codes.Canceled},
	} {
		ctx, cancel := c.ctx()
		w := (*budget.Budget)(nil).Work(ctx, "v", "team-a", shippedVolume, 1<<62)
		start := time.Now()
		_, err := tp.render(nil, w)
		cancel()
		if provider.CodeOf(err) != c.code {
			t.Errorf("render: %v, want %s", err, c.code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("render stopped %v after its context", d)
		}
	}
}

// Recursion and deep nesting are refused when the class is read; required
// takes literal text only, so no value can become an error message.
func TestTemplateRefusedAtParse(t *testing.T) {
	for src, want := range map[string]string{
		`{{ define "a" }}{{ template "b" . }}{{ end }}{{ define "b" }}{{ template "a" . }}{{ end }}{{ template "a" . }}`: "recursion",
		strings.Repeat("{{ if 1 }}", 100) + strings.Repeat("{{ end }}", 100):                                             "nest",
		"{{ " + strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100) + " }}":                                        "nest",
		`{{ required .x .y }}`:              "quoted text",
		`{{ .y | required (index . "x") }}`: "quoted text",
		`{{ call .x }}`:                     "",
	} {
		if _, _, err := parseTemplate("t", src); err == nil || !strings.Contains(err.Error(), want) {
			if want == "" { // refused when it runs
				if _, err := render(t, src, map[string]string{"x": "v"}, 1<<20); err != nil {
					continue
				}
			}
			t.Errorf("%.50q: %v, want a refusal saying %q", src, err, want)
		}
	}
	_, err := render(t, `{{ .y | required "set y" }}`, map[string]string{"y": ""}, 1<<20)
	if provider.CodeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "set y") {
		t.Errorf("required: %v", err)
	}
}

// A YAML value with one large anchored scalar and thousands of aliases was
// expanded to gigabytes before the size check.
func TestYAMLAliasesAreChargedExpanded(t *testing.T) {
	doc := "big: &b " + strings.Repeat("x", 1<<20) + "\nlist: [" + strings.Repeat("*b, ", 5000) + "*b]\n"
	p, err := ParseKeyPath("list")
	if err != nil {
		t.Fatal(err)
	}
	n := allocated(func() { _, err = p.Extract([]byte(doc), work(shippedVolume)) })
	if provider.CodeOf(err) != codes.ResourceExhausted {
		t.Errorf("5000 aliases of 1 MiB: %v, want ResourceExhausted", err)
	}
	if n > 4*shippedVolume {
		t.Errorf("5000 aliases of 1 MiB allocated %d MiB before the refusal", n>>20)
	}
	// Nested anchors (a billion laughs) are measured once each.
	laughs := "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for _, name := range []string{"b", "c", "d", "e", "f", "g", "h", "i", "j"} {
		laughs += name + ": &" + name + " [" + strings.Repeat("*"+prev+", ", 9) + "*" + prev + "]\n"
		prev = name
	}
	p, _ = ParseKeyPath("j")
	if _, err := p.Extract([]byte(laughs), work(shippedVolume)); provider.CodeOf(err) != codes.ResourceExhausted {
		t.Errorf("a billion laughs: %v, want ResourceExhausted", err)
	}
	// A small alias still works.
	p, _ = ParseKeyPath("b")
	if out, err := p.Extract([]byte("a: &a {k: v}\nb: *a\n"), work(shippedVolume)); err != nil || string(out) != `{"k":"v"}` {
		t.Errorf("a small alias: %q, %v", out, err)
	}
}

// Parsing a document is charged before it is parsed: YAML of two bytes a
// value costs about 130 bytes a byte to parse.
func TestExtractParseIsCharged(t *testing.T) {
	docs := map[string]string{
		"yaml": "[" + strings.Repeat("a,", 1<<20) + "a]",
		"json": "[" + strings.Repeat("0,", 1<<20) + "0]",
	}
	for name, doc := range docs {
		p, _ := ParseKeyPath("[0]")
		var err error
		n := allocated(func() { _, err = p.Extract([]byte(doc), work(shippedVolume)) })
		if provider.CodeOf(err) != codes.ResourceExhausted || n > 2*shippedVolume {
			t.Errorf("%s of 2 MiB, a value every two bytes: %v after %d MiB", name, err, n>>20)
		}
	}
}

// Parsed templates are remembered by source, and a parse tree holds about
// 100 bytes per byte of source: classes of dense templates must not make
// the memo hold more than its bound (before, 4 MiB of source: ~400 MiB).
func TestTemplateMemoIsBoundedInTreeBytes(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 40 {
		src := "- path: f\n  template: '" + strings.Repeat("{{1}}", 12000) + strings.Repeat("x", i) + "'\n"
		if _, err := memo.get(src, nil); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > maxMemoTrees+8<<20 {
		t.Errorf("the memo holds %d MiB after 40 dense classes; bound %d MiB", grown>>20, maxMemoTrees>>20)
	}
}

// Found by an attack as a tenant: 256 classes of 15 KiB of {{.}} each held
// 284 MiB of parse trees in a memo bounded by source bytes.
func TestTemplateMemoAfterManyClasses(t *testing.T) {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	for i := range 256 {
		src := "- path: f" + strconv.Itoa(i) + "\n  template: |\n    " + strings.Repeat("{{.}}", 3000) + "\n"
		if _, err := memo.get(src, nil); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&b)
	if held := int64(b.HeapAlloc) - int64(a.HeapAlloc); held > maxMemoTrees+8<<20 {
		t.Errorf("256 classes of 15 KiB templates: the memo holds %d MiB; bound %d MiB", held>>20, maxMemoTrees>>20)
	}
}

// printf's charge covers its widest verbs: % #x writes 5 bytes a byte.
func TestPrintfChargeCoversWideVerbs(t *testing.T) {
	data := map[string]string{"x": strings.Repeat("A", 4096)}
	for _, verb := range []string{"% #x", "%q", "%+q", "% x", "%#v", "%x"} {
		src := `{{ printf "` + strings.Repeat(verb, 8) + `" .x }}`
		w := work(1 << 20)
		tt, steps, err := parseTemplate("t", src)
		if err != nil {
			t.Fatal(err)
		}
		tp := &Template{Path: "t", t: tt, steps: steps}
		var out []byte
		n := allocated(func() { out, err = tp.render(data, w) })
		if err != nil {
			t.Fatalf("%s: %v", verb, err)
		}
		if int64(len(out)) > charged(w, 1<<20) || int64(n) > 2*charged(w, 1<<20)+256<<10 {
			t.Errorf("%s: %d bytes out, %d allocated, %d charged", verb, len(out), n, charged(w, 1<<20))
		}
	}
}
