package provider

import (
	"os"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456..."},
		{"ééééé", 6, "é..."}, // never half a character
		{"abc", 2, "..."},
	} {
		got := Clip(tc.in, tc.n)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("Clip(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

func TestParseFileMode(t *testing.T) {
	for in, want := range map[string]os.FileMode{"0644": 0o644, "440": 0o440, "0": 0, "0777": 0o777} {
		if got, err := ParseFileMode(in); err != nil || got != want {
			t.Errorf("ParseFileMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1000", "04755", "0888", "rw-r--r--", "-644", "0x1ff", "00644"} {
		if _, err := ParseFileMode(in); err == nil {
			t.Errorf("ParseFileMode(%q) accepted", in)
		}
	}
}

func FuzzParseFileMode(f *testing.F) {
	for _, s := range []string{"0644", "440", "7777", "", "0x1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseFileMode(s)
		if err == nil && m&^0o777 != 0 {
			t.Fatalf("%q gave %v", s, m)
		}
	})
}
