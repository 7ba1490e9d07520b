package provider

import (
	"fmt"
	"path"
	"sort"
	"strings"
)

// Limits on file paths inside a volume, the ones Linux enforces itself.
const (
	MaxElementBytes = 255
	MaxPathBytes    = 4096
)

// ValidatePath is the one check of a file path inside a volume, used by
// every backend and by the driver's atomic writer: relative, slash-separated,
// clean, no ".." anywhere, no element starting with ".." (those names belong
// to the writer), within the Linux name limits. A path that passes stays
// inside the volume. Messages quote the path, which is a file name chosen by
// the class author, never secret content.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("file path is empty")
	case len(p) > MaxPathBytes:
		return fmt.Errorf("file path %.64q... is %d bytes long, the limit is %d", p, len(p), MaxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("file path %q contains a NUL byte", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("file path %q is absolute: use a path relative to the volume", p)
	case path.Clean(p) != p || p == ".":
		return fmt.Errorf("file path %q is not clean (no '.', '..', empty or trailing elements)", p)
	}
	for el := range strings.SplitSeq(p, "/") {
		if el == ".." {
			return fmt.Errorf("file path %q contains '..'", p)
		}
		if strings.HasPrefix(el, "..") {
			return fmt.Errorf("file path %q has an element starting with '..', which is reserved for the volume's own bookkeeping", p)
		}
		if len(el) > MaxElementBytes {
			return fmt.Errorf("file path %.64q... has an element of %d bytes, the limit is %d", p, len(el), MaxElementBytes)
		}
	}
	return nil
}

// ValidatePaths checks every path (ValidatePath) and that they can exist
// together as one tree: no duplicates and no file that is also the parent
// directory of another file. It sorts paths in place.
func ValidatePaths(paths []string) error {
	for _, p := range paths {
		if err := ValidatePath(p); err != nil {
			return err
		}
	}
	sort.Strings(paths)
	for i := 1; i < len(paths); i++ {
		prev, cur := paths[i-1], paths[i]
		if prev == cur {
			return fmt.Errorf("file path %q appears more than once: give each object a distinct name or alias", cur)
		}
	}
	// "a" conflicts with "a/b"; sorting does not put them next to each other
	// ("a-b" sorts between), so check the parent directories against the set.
	set := make(map[string]struct{}, len(paths))
	for _, p := range paths {
		set[p] = struct{}{}
	}
	for _, p := range paths {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if _, ok := set[dir]; ok {
				return fmt.Errorf("file path %q is also used as the directory of %q", dir, p)
			}
		}
	}
	return nil
}
