package agent

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestParseCredentialPeer(t *testing.T) {
	for _, c := range []struct {
		raw, unit, id string
	}{
		{"\x00adf9d86b6eda275e/unit/foobar.service/credx", "foobar.service", "credx"}, // systemd.exec(5)'s example
		{"\x001/unit/app@web\\x2d1.service/db.password", `app@web\x2d1.service`, "db.password"},
		{"\x00ABCdef0/unit/a.socket/.env", "a.socket", ".env"},
	} {
		unit, id, err := ParseCredentialPeer([]byte(c.raw))
		if err != nil || unit != c.unit || id != c.id {
			t.Errorf("%q: %q %q %v, want %q %q", c.raw, unit, id, err, c.unit, c.id)
		}
	}
	for _, raw := range []string{
		"",
		"adf9/unit/foobar.service/credx",            // a path, not abstract
		"\x00/unit/foobar.service/credx",            // no random part
		"\x00ad-f9/unit/foobar.service/credx",       // not alphanumeric
		"\x00adf9/units/foobar.service/credx",       // not /unit/
		"\x00adf9/unit/foobar/credx",                // no unit type
		"\x00adf9/unit/foo bar.service/credx",       // not a unit name character
		"\x00adf9/unit/foobar.service/",             // no ID
		"\x00adf9/unit/foobar.service/a/b",          // a path as ID
		"\x00adf9/unit/foobar.service/..data",       // the atomic writer's link
		"\x00adf9/unit/foobar.service/..2026_12_05", // its directories
		"\x00adf9/unit/foobar.service/cred\x00",     // NUL
		"\x00adf9/unit/foobar.service/" + strings.Repeat("x", 256),
		"\x00" + strings.Repeat("a", 33) + "/unit/foobar.service/credx",
	} {
		if unit, id, err := ParseCredentialPeer([]byte(raw)); err == nil {
			t.Errorf("%q parsed as %q %q", raw, unit, id)
		}
	}
}

// Whatever the address, the parser returns a unit name and an ID that
// rebuild the address after the random part, or an error; never a name
// with a path separator or an ID of the atomic writer's.
func FuzzParseCredentialPeer(f *testing.F) {
	f.Add([]byte("\x00adf9d86b6eda275e/unit/foobar.service/credx"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		unit, id, err := ParseCredentialPeer(raw)
		if err != nil {
			return
		}
		if !bytes.HasSuffix(raw, []byte("/unit/"+unit+"/"+id)) || raw[0] != 0 {
			t.Fatalf("%q parsed as %q %q", raw, unit, id)
		}
		if strings.ContainsAny(unit+id, "/\x00") || strings.HasPrefix(id, "..") || !validUnitName(unit) {
			t.Fatalf("%q parsed as %q %q", raw, unit, id)
		}
	})
}

func TestCredentialRules(t *testing.T) {
	var r CredentialRules
	for _, s := range []string{"db=app.service,web@*.service", "tls=proxy.service"} {
		if err := r.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		unit, id string
		want     bool
	}{
		{"app.service", "db", true},
		{"web@1.service", "db", true},
		{"web.service", "db", false},
		{"proxy.service", "db", false},
		{"proxy.service", "tls", true},
		{"anything.service", "other", true}, // no rule
	} {
		if got := r.allows(c.unit, c.id); got != c.want {
			t.Errorf("allows(%s, %s) = %v", c.unit, c.id, got)
		}
	}
	r.Only = true
	if r.allows("anything.service", "other") {
		t.Error("Only: an ID without a rule is served")
	}
	for _, bad := range []string{"db", "db=", "=app.service", "..data=app.service", "a/b=app.service", "db=app", "db=a[.service", "db=a b.service"} {
		if err := r.Add(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// systemd escapes unit names with backslashes (systemd-escape: "-" in an
// instance is \x2d). A rule names the unit as systemd does; the backslash
// is the unit's, not path.Match's escape: the rule must serve that unit
// and not another whose name lacks the backslash, which any process that
// can connect could bind.
func TestCredentialRulesEscapedUnitNames(t *testing.T) {
	var r CredentialRules
	if err := r.Add(`db=app@web\x2d1.service,job@\x2d*.service`); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		unit string
		want bool
	}{
		{`app@web\x2d1.service`, true},
		{`app@webx2d1.service`, false},
		{`job@\x2dnightly.service`, true},
		{`job@x2dnightly.service`, false},
	} {
		if got := r.allows(c.unit, "db"); got != c.want {
			t.Errorf("allows(%s, db) = %v, want %v", c.unit, got, c.want)
		}
	}
}

// Whatever rule is accepted, a unit it names without a wildcard gets the
// credential, and a unit whose name differs from every one it names (here:
// one with a character appended) does not.
func FuzzCredentialRules(f *testing.F) {
	f.Add(`db=app.service,web@*.service`)
	f.Add(`db=app@web\x2d1.service`)
	f.Fuzz(func(t *testing.T, s string) {
		var r CredentialRules
		if err := r.Add(s); err != nil {
			return
		}
		r.Only = true
		for id, units := range r.Units {
			for _, u := range units {
				if strings.ContainsAny(u, "*?") {
					continue
				}
				if !r.allows(u, id) {
					t.Fatalf("rule %q: unit %q refused %q", s, u, id)
				}
				if other := u + "x"; !slices.Contains(units, other) && !anyWildcard(units) && r.allows(other, id) {
					t.Fatalf("rule %q: unit %q served %q", s, other, id)
				}
			}
		}
	})
}

func anyWildcard(units []string) bool {
	return slices.ContainsFunc(units, func(u string) bool { return strings.ContainsAny(u, "*?") })
}
