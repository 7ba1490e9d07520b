package fake

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// FuzzParseObjects checks that any objects parameter either parses into
// objects the driver can write safely or fails InvalidArgument, and never
// panics. Seeds are in testdata/fuzz/FuzzParseObjects.
func FuzzParseObjects(f *testing.F) {
	f.Add("- {objectName: a, value: x}\n")
	f.Fuzz(func(t *testing.T, in string) {
		objs, err := parseObjects(in)
		if err != nil {
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("error with code %v: %v", provider.CodeOf(err), err)
			}
			return
		}
		if len(objs) == 0 || len(objs) > maxObjects {
			t.Fatalf("parsed %d objects", len(objs))
		}
		seen := map[string]bool{}
		for _, o := range objs {
			if o.prefix != "" {
				if !safeName(o.prefix, maxNameLen) || o.path != "" || o.hasVal || o.gen != 0 || o.mode&^os.ModePerm != 0 {
					t.Fatalf("selector %+v accepted", o)
				}
				continue
			}
			if !safeName(o.name, maxNameLen) {
				t.Fatalf("unsafe objectName %q accepted", o.name)
			}
			if o.path == "" || strings.HasPrefix(o.path, "/") || strings.HasPrefix(o.path, "..") ||
				strings.Contains(o.path, "/../") || strings.HasSuffix(o.path, "/..") || strings.Contains(o.path, "//") ||
				strings.Contains(o.path, "\x00") || strings.Contains(o.path, "\\") {
				t.Fatalf("unsafe file name %q accepted", o.path)
			}
			if seen[o.path] {
				t.Fatalf("duplicate file name %q accepted", o.path)
			}
			seen[o.path] = true
			if o.mode&^os.ModePerm != 0 {
				t.Fatalf("mode %v has more than permission bits", o.mode)
			}
			if o.hasVal && o.gen != 0 || o.gen < 0 || o.gen > maxGenerate {
				t.Fatalf("object %q: value %v, generate %d", o.name, o.hasVal, o.gen)
			}
		}
		for p := range seen {
			for d := parentDir(p); d != ""; d = parentDir(d) {
				if seen[d] {
					t.Fatalf("%q is both a file and a directory", d)
				}
			}
		}
	})
}
