package plugin

import (
	"regexp"
	"strings"
	"testing"
)

// ValidName accepts exactly what the regular expression it replaced
// accepts, less names with "..".
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"", "a", "vault", "azure-kv", "a.b", "a..b", ".", "..", "_a", "a_", "-a", "a/b", "é",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := nameRE.MatchString(s) && !strings.Contains(s, "..")
		if got := ValidName(s); got != want {
			t.Errorf("ValidName(%q) = %v, the expression says %v", s, got, want)
		}
	})
}
