package content

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

func TestParseKeyPath(t *testing.T) {
	ok := map[string]string{ // path -> how describe prints the whole path
		"password":               "password",
		".database.password":     "database.password",
		"servers[0].host":        "servers[0].host",
		`["tls.crt"]`:            `["tls.crt"]`,
		`users[2]["first name"]`: `users[2]["first name"]`,
		"a-b_c.d1":               "a-b_c.d1",
		"[0][1]":                 "[0][1]",
		`["with \"q\""]`:         `["with \"q\""]`,
	}
	for in, want := range ok {
		p, err := ParseKeyPath(in)
		if err != nil {
			t.Errorf("ParseKeyPath(%q): %v", in, err)
			continue
		}
		if got := p.describe(len(p.steps) - 1); got != want {
			t.Errorf("ParseKeyPath(%q) steps print as %q, want %q", in, got, want)
		}
	}
	bad := []string{"", ".", "a..b", "a.", "a[", "a[]", "a[-1]", "a[01]", `a["x]`, `a["x"`, "a b", "a]", `a"b`, "a[x]",
		strings.Repeat("a.", 100) + "a", strings.Repeat("x", 2000), "\xff"}
	for _, in := range bad {
		if _, err := ParseKeyPath(in); err == nil {
			t.Errorf("ParseKeyPath(%q) accepted", in)
		}
	}
}

func TestExtract(t *testing.T) {
	const jsonDoc = `{"db":{"user":"app","password":"s3cr3t!","port":5432,"tls":true,"none":null,
		"hosts":["a","b"],"opts":{"z":1,"a":"<x>"}},"a.b":"dotted"}`
	const yamlDoc = "db:\n  user: app\n  password: s3cr3t!\n  port: 5432\n  tls: true\n  none: ~\n  hosts: [a, b]\n  opts: {z: 1, a: <x>}\n  anchor: &x {k: v}\n  alias: *x\n\"a.b\": dotted\n"
	cases := []struct{ path, want string }{
		{"db.user", "app"},
		{"db.password", "s3cr3t!"},
		{"db.port", "5432"},
		{"db.tls", "true"},
		{"db.none", ""},
		{"db.hosts[1]", "b"},
		{"db.hosts", `["a","b"]`},
		{"db.opts", `{"a":"<x>","z":1}`},
		{`["a.b"]`, "dotted"},
	}
	for _, doc := range []string{jsonDoc, yamlDoc} {
		for _, c := range cases {
			p, err := ParseKeyPath(c.path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.Extract([]byte(doc), work(1<<20))
			if err != nil {
				t.Errorf("%s in %.10q: %v", c.path, doc, err)
				continue
			}
			if string(got) != c.want {
				t.Errorf("%s in %.10q = %q, want %q", c.path, doc, got, c.want)
			}
		}
	}
	p, _ := ParseKeyPath("db.alias.k")
	if got, err := p.Extract([]byte(yamlDoc), work(1<<20)); err != nil || string(got) != "v" {
		t.Errorf("YAML alias: %q, %v", got, err)
	}
}

// Errors say where, with the right code, and never hold the value.
func TestExtractErrors(t *testing.T) {
	const secret = "s3cr3t-VALUE"
	docs := []string{
		`{"db":{"password":"` + secret + `","list":["` + secret + `"]}}`,
		"db:\n  password: " + secret + "\n  list: [" + secret + "]\n",
	}
	cases := []struct {
		path string
		code codes.Code
	}{
		{"db.user", codes.NotFound},
		{"db.list[3]", codes.NotFound},
		{"db[0]", codes.InvalidArgument},
		{"db.list.x", codes.InvalidArgument},
		{"db.password.x", codes.InvalidArgument},
	}
	for _, doc := range docs {
		for _, c := range cases {
			p, _ := ParseKeyPath(c.path)
			_, err := p.Extract([]byte(doc), work(1<<20))
			if provider.CodeOf(err) != c.code {
				t.Errorf("%s: code %v (%v), want %v", c.path, provider.CodeOf(err), err, c.code)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("%s: error holds the value: %v", c.path, err)
			}
		}
	}
	p, _ := ParseKeyPath("a")
	for _, doc := range []string{"", "   ", "a: [" + secret, "{\"a\": " + secret + "\n  - x: :"} {
		_, err := p.Extract([]byte(doc), work(100))
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("Extract of a broken document: %v", err)
		}
	}
	if _, err := p.Extract([]byte(`{"a":"`+strings.Repeat("x", 200)+`"}`), work(100)); provider.CodeOf(err) != codes.ResourceExhausted {
		t.Errorf("value over the limit: %v", err)
	}
}

func FuzzParseKeyPath(f *testing.F) {
	for _, s := range []string{"a", ".a.b", "a[0]", `["x.y"]`, `a["\u00e9"][2].b`, "a..b", "[", `["`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseKeyPath(s)
		if err != nil {
			return
		}
		if len(p.steps) == 0 || len(p.steps) > maxPathSteps {
			t.Fatalf("%q: %d steps", s, len(p.steps))
		}
		// The printed form parses to the same steps.
		q, err := ParseKeyPath(p.describe(len(p.steps) - 1))
		if err != nil {
			t.Fatalf("%q prints as %q, which does not parse: %v", s, p.describe(len(p.steps)-1), err)
		}
		if q.describe(len(q.steps)-1) != p.describe(len(p.steps)-1) {
			t.Fatalf("%q: round trip changed the path", s)
		}
	})
}

func FuzzExtract(f *testing.F) {
	f.Add("a.b", `{"a":{"b":"c"}}`)
	f.Add("a[1]", "a: [x, y]\n")
	f.Add("a", "a: &x [*x]\n")
	f.Add(`["k"]`, "k: !!binary aGk=\n")
	f.Add("a", "- [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]\n")
	f.Fuzz(func(t *testing.T, path, doc string) {
		p, err := ParseKeyPath(path)
		if err != nil {
			return
		}
		w := work(1 << 16)
		var out []byte
		n := allocated(func() { out, err = p.Extract([]byte(doc), w) })
		if err == nil && len(out) > 1<<16 {
			t.Fatalf("result of %d bytes over the limit", len(out))
		}
		// Parsing and printing allocate at most what was charged (which
		// never passes the limit), with room for the parser's own buffers.
		if bound := uint64(charged(w, 1<<16)) + 4*uint64(len(doc)) + 64<<10; n > bound {
			t.Fatalf("allocated %d bytes, charged %d, bound %d", n, charged(w, 1<<16), bound)
		}
		if err != nil && provider.CodeOf(err) == codes.Internal {
			t.Fatalf("untyped error: %v", err)
		}
	})
}
