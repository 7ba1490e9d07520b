package atomicwriter

import (
	"strings"
	"testing"
)

func TestValidateFiles(t *testing.T) {
	for name, tc := range map[string]struct {
		paths []string
		want  string
	}{
		"ok":        {[]string{"a", "b/c", "b/d", "a-b"}, ""},
		"duplicate": {[]string{"x", "y", "x"}, "more than once"},
		"prefix":    {[]string{"a/b/c", "a-b", "a/b"}, "directory of"},
	} {
		var files []File
		for _, p := range tc.paths {
			files = append(files, File{Path: p, Mode: 0o644})
		}
		err := ValidateFiles(files)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: want %q, got %v", name, tc.want, err)
		}
	}
}

// Every path check is the provider's: a bad path is refused here too.
func TestValidateFilesChecksPaths(t *testing.T) {
	for _, p := range []string{"../x", "/etc/passwd", "..data", "a//b"} {
		if err := ValidateFiles([]File{{Path: "ok", Mode: 0o644}, {Path: p, Mode: 0o644}}); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
	if err := ValidateFiles([]File{{Path: "x", Mode: 0o4755}}); err == nil || !strings.Contains(err.Error(), "only permission bits") {
		t.Errorf("setuid mode: %v", err)
	}
}
