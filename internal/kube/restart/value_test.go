package restart

import (
	"testing"
	"time"

	"github.com/secretfs/secretfs/provider"
)

func TestValue(t *testing.T) {
	a := []provider.File{{Path: "a", Mode: 0o644, Contents: []byte("1")}, {Path: "b", Mode: 0o400, Contents: []byte("2")}}
	swapped := []provider.File{a[1], a[0]}
	base := Digest("ns", "app", a)
	if Digest("ns", "app", swapped) != base {
		t.Error("the digest depends on the order of the files")
	}
	for name, d := range map[string][32]byte{
		"another class":                Digest("ns", "app2", a),
		"another namespace":            Digest("ns2", "app", a),
		"a boundary moved":             Digest("ns", "app", []provider.File{{Path: "a", Mode: 0o644, Contents: []byte("12")}, {Path: "b", Mode: 0o400}}),
		"a mode":                       Digest("ns", "app", []provider.File{{Path: "a", Mode: 0o600, Contents: []byte("1")}, a[1]}),
		"a content":                    Digest("ns", "app", []provider.File{{Path: "a", Mode: 0o644, Contents: []byte("3")}, a[1]}),
		"a path":                       Digest("ns", "app", []provider.File{{Path: "c", Mode: 0o644, Contents: []byte("1")}, a[1]}),
		"the namespace/class boundary": Digest("nsa", "pp", a),
	} {
		if d == base {
			t.Errorf("%s: same digest", name)
		}
	}
	start := time.Now()
	v := Value(base)
	t.Logf("Value took %v", time.Since(start))
	if len(v) != 32 || v != Value(base) || v == Value(Digest("ns", "app", swapped[:1])) {
		t.Errorf("Value = %q: want 32 hex digits, stable, differing with the content", v)
	}
}
