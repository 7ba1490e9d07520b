package provider

import (
	"path"
	"strings"
	"testing"
)

func TestValidatePath(t *testing.T) {
	good := []string{"a", "a/b", "tls.crt", "dir/sub/file", "a..b", ".hidden", "x/.y", strings.Repeat("n", 255)}
	for _, p := range good {
		if err := ValidatePath(p); err != nil {
			t.Errorf("%q rejected: %v", p, err)
		}
	}
	bad := map[string]string{
		"":                                    "empty",
		"../x":                                "'..'",
		"/etc/passwd":                         "absolute",
		"a/../../b":                           "not clean",
		"a/./b":                               "not clean",
		"./a":                                 "not clean",
		"a/":                                  "not clean",
		"a//b":                                "not clean",
		".":                                   "not clean",
		"..":                                  "'..'",
		"..data":                              "reserved",
		"x/..y":                               "reserved",
		"a\x00b":                              "NUL",
		strings.Repeat("n", 256):              "element of 256 bytes",
		strings.Repeat("abcdefg/", 600) + "x": "bytes long",
	}
	for p, want := range bad {
		err := ValidatePath(p)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: want error containing %q, got %v", p, want, err)
		}
	}
}

func FuzzValidatePath(f *testing.F) {
	for _, s := range []string{"a", "a/b", "../x", "/etc/passwd", "a/../../b", "..data", "a//b", "x/..y", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if ValidatePath(p) != nil {
			return
		}
		// Anything accepted stays inside the directory and off the reserved names.
		if path.IsAbs(p) || path.Clean(p) != p || len(p) > MaxPathBytes {
			t.Fatalf("accepted %q", p)
		}
		for _, el := range strings.Split(p, "/") {
			if strings.HasPrefix(el, "..") || el == "." || el == "" || len(el) > MaxElementBytes {
				t.Fatalf("accepted %q with element %q", p, el)
			}
		}
		if strings.HasPrefix(path.Join("/vol", p), "/vol/") == false {
			t.Fatalf("%q escapes", p)
		}
	})
}
