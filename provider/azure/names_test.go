package azure

import (
	"regexp"
	"strings"
	"testing"
)

// The validators accept exactly what the regular expressions they replaced
// accept.
var (
	vaultNameRE     = regexp.MustCompile(`^[A-Za-z0-9-]{3,24}$`)
	objectNameRE    = regexp.MustCompile(`^[A-Za-z0-9-]{1,127}$`)
	objectVersionRE = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)
	tenantRE        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$`)
)

func FuzzNameValidators(f *testing.F) {
	for _, s := range []string{"", "a", "ab", "abc", "kv-1", "-", "a.b", ".a", "a\n", "é", "a_b",
		strings.Repeat("a", 24), strings.Repeat("a", 25), strings.Repeat("b", 127), strings.Repeat("b", 128),
		strings.Repeat("c", 64), strings.Repeat("c", 65), "0" + strings.Repeat("d", 127), "0" + strings.Repeat("d", 128),
		"00000000-0000-0000-0000-000000000000", "contoso.onmicrosoft.com"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range []struct {
			name string
			got  bool
			re   *regexp.Regexp
		}{
			{"vault name", validVaultName(s), vaultNameRE},
			{"object name", validObjectName(s), objectNameRE},
			{"object version", validObjectVersion(s), objectVersionRE},
			{"tenant", validTenant(s), tenantRE},
		} {
			if want := c.re.MatchString(s); c.got != want {
				t.Errorf("%s %q: %v, the expression says %v", c.name, s, c.got, want)
			}
		}
	})
}
