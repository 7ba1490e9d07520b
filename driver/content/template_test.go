package content

import (
	"context"
	"fmt"

	"github.com/secretfs/secretfs/driver/budget"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

func render(t *testing.T, src string, data map[string]string, limit int64) ([]byte, error) {
	t.Helper()
	tt, steps, err := parseTemplate("out.env", src)
	if err != nil {
		return nil, provider.InvalidArgument("%v", err)
	}
	tp := &Template{Path: "out.env", t: tt, steps: steps}
	return tp.render(data, work(limit))
}

func TestTemplateFunctions(t *testing.T) {
	data := map[string]string{"user": "app", "password": " p@ss w'rd\n", "db-host": "db.example", "b64": "aGVsbG8="}
	cases := map[string]string{
		`USER={{ .user }}`:                                     "USER=app",
		`{{ index . "db-host" }}`:                              "db.example",
		`{{ .password | trim }}`:                               "p@ss w'rd",
		`{{ .user | base64 }}`:                                 "YXBw",
		`{{ .b64 | base64decode }}`:                            "hello",
		`{{ .password | trim | quote }}`:                       `"p@ss w'rd"`,
		`{{ .password | trim | squote }}`:                      `'p@ss w'\''rd'`,
		`{{ .password | trim | json }}`:                        `"p@ss w'rd"`,
		`{{ .password | trim | urlquery }}`:                    "p%40ss+w%27rd",
		`{{ .user | upper }}{{ "X" | lower }}`:                 "APPx",
		`{{ replace "a" "bb" "banana" }}`:                      "bbbnbbnbb",
		`{{ .user | trimPrefix "a" | trimSuffix "p" }}`:        "p",
		`{{ indent 2 "a\nb" }}`:                                "  a\n  b",
		`{{ index . "nope" | default "x" }}`:                   "x",
		`{{ printf "%s:%5s" .user "p" }}`:                      "app:    p",
		`{{ range $k, $v := . }}{{ $k }};{{ end }}`:            "b64;db-host;password;user;",
		`{{ with index . "missing" }}x{{ else }}none{{ end }}`: "none",
	}
	for src, want := range cases {
		got, err := render(t, src, data, 1<<20)
		if err != nil {
			t.Errorf("%s: %v", src, err)
			continue
		}
		if string(got) != want {
			t.Errorf("%s = %q, want %q", src, got, want)
		}
	}
}

// Failing templates are InvalidArgument naming the template and line, and
// never show a value.
func TestTemplateErrors(t *testing.T) {
	data := map[string]string{"password": "s3cr3t-VALUE"}
	cases := map[string]string{
		"a\nb\n{{ .nope }}":                       "line 3",
		"a\n{{ .password | base64decode }}":       "line 2",
		"{{ required \"set password2\" .x2 }}":    "line 1",
		"x\n{{ if }}":                             "line 2",
		"{{ env \"HOME\" }}":                      `function "env" not defined`,
		"{{ readFile \"/etc/passwd\" }}":          `function "readFile" not defined`,
		"{{ index .password 1 | printf \"%d\" }}": "",
		"{{ .password.x }}":                       "line 1",
	}
	for src, want := range cases {
		_, err := render(t, src, data, 1<<20)
		if err == nil {
			if want != "" {
				t.Errorf("%q rendered", src)
			}
			continue
		}
		if provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%q: code %v: %v", src, provider.CodeOf(err), err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v does not say %q", src, err, want)
		}
		if strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("%q: error holds the value: %v", src, err)
		}
	}
}

// A template cannot make the driver spend unbounded CPU or memory.
func TestTemplateBounds(t *testing.T) {
	data := map[string]string{"x": strings.Repeat("x", 1000)}
	cases := map[string]string{
		"{{ range 1000000000 }}{{ end }}":                                         "steps (driver flag --max-steps)",
		"{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}":                  "steps (driver flag --max-steps)",
		"{{ range 1000 }}{{ $.x }}{{ end }}":                                      "bytes (driver flag --tmpfs-size)",
		"{{ $s := .x }}{{ range 40 }}{{ $s = printf \"%s%s\" $s $s }}{{ end }}":   "bytes (driver flag --tmpfs-size)",
		"{{ $s := .x }}{{ range 40 }}{{ $s = print $s $s }}{{ end }}":             "bytes (driver flag --tmpfs-size)",
		"{{ $s := .x }}{{ range 40 }}{{ $s = replace \"x\" \"xx\" $s }}{{ end }}": "bytes (driver flag --tmpfs-size)",
		"{{ $s := .x }}{{ range 40 }}{{ $s = json $s }}{{ end }}":                 "bytes (driver flag --tmpfs-size)",
	}
	for src, want := range cases {
		_, err := render(t, src, data, 64<<10)
		if provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, want ResourceExhausted (%s)", src, err, want)
		}
	}
	for _, src := range []string{`{{ printf "%01000000000d" 1 }}`, `{{ printf "%*d" 1000000000 1 }}`, `{{ printf "%.1000000000f" 1.0 }}`, `{{ indent 1000000000 "a" }}`} {
		if _, err := render(t, src, data, 64<<10); err == nil {
			t.Errorf("%s rendered", src)
		}
	}
	if _, _, err := parseTemplate("r", `{{ define "a" }}{{ template "a" . }}{{ template "a" . }}{{ end }}{{ template "a" . }}`); err == nil || !strings.Contains(err.Error(), "recursion") {
		t.Errorf("recursive template: %v", err)
	}
	if _, _, err := parseTemplate("big", strings.Repeat("x", maxTemplateSource+1)); err == nil {
		t.Error("oversized template parsed")
	}
}

func FuzzTemplate(f *testing.F) {
	for _, s := range []string{
		"A={{ .a }}\nB={{ index . \"b-c\" | base64 }}\n",
		"{{ range $k, $v := . }}{{ $k }}={{ $v | quote }}\n{{ end }}",
		`{{ define "x" }}{{ . }}{{ end }}{{ template "x" .a }}`,
		"{{ range 10 }}{{ printf \"%5d\" . }}{{ end }}",
		"{{ if eq .a \"1\" }}{{ .a | json }}{{ else }}{{ .a | trim | upper }}{{ end }}",
		"{{ with $x := .a }}{{ $x | urlquery }}{{ end }}",
		"{{ .a | replace \"a\" \"bb\" | indent 4 }}",
		"{{ block \"b\" . }}{{ .a }}{{ end }}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		tt, steps, err := parseTemplate("f", src)
		if err != nil {
			return
		}
		tp := &Template{Path: "f", t: tt, steps: steps}
		const limit, maxSteps = 1 << 16, 10000
		w := (*budget.Budget)(nil).Work(context.Background(), "f", "team-a", limit, maxSteps)
		var out []byte
		n := allocated(func() { out, err = tp.render(map[string]string{"a": "1", "b-c": "two"}, w) })
		if err == nil && len(out) > limit {
			t.Fatalf("output of %d bytes over the limit", len(out))
		}
		if err != nil && provider.CodeOf(err) == codes.Internal {
			t.Fatalf("untyped error: %v", err)
		}
		// What a render may allocate: what it charged (at most the limit),
		// twice over for fmt's and text/template's own copies, plus the
		// renderer's bookkeeping, a bounded amount per step.
		if bound := uint64(2*charged(w, limit)) + 1024*uint64(w.StepsTaken()) + 256<<10; n > bound {
			t.Fatalf("%q allocated %d bytes; charged %d bytes and %d steps, bound %d", src, n, charged(w, limit), w.StepsTaken(), bound)
		}
		if w.StepsTaken() > maxSteps {
			t.Fatalf("%d steps taken, more than %d", w.StepsTaken(), maxSteps)
		}
	})
}

// A range over a map copies and sorts its keys before the first iteration,
// however soon the body breaks: that is charged up front (11 steps a key
// for 1,024 keys), so a tenant's template cannot sort the volume's file
// names over and over for a few steps each. Before, 2,000 sorts of 1,024
// names took 9,000 steps, and a million of them (12 s of CPU) fit in
// --max-steps.
func TestRangeOverMapChargesItsSort(t *testing.T) {
	data := map[string]string{}
	for i := range 1024 {
		data[fmt.Sprintf("o%04d", i)] = "v"
	}
	_, err := render(t, "{{ range 2000 }}{{ range $ }}{{ break }}{{ end }}{{ end }}", data, shippedVolume)
	if provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "steps (driver flag --max-steps)") {
		t.Fatalf("%v, want ResourceExhausted naming --max-steps", err)
	}
	// Nine sorts fit in the default steps.
	if _, err := render(t, "{{ range 8 }}{{ range $ }}{{ break }}{{ end }}{{ end }}", data, shippedVolume); err != nil {
		t.Fatal(err)
	}
	// Ranging over an integer costs nothing before its first iteration.
	if out, err := render(t, "{{ range 1000000000 }}{{ break }}{{ end }}", data, shippedVolume); err != nil || len(out) != 0 {
		t.Errorf("%q, %v", out, err)
	}
}
