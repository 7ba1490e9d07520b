package fake

import (
	"errors"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Mount by selector, the fake backend's way: an item with objectNamePrefix
// instead of objectName selects the data files of the pod's namespace
// (DIR/<namespace>/, --fake-data-dir) whose names start with the prefix,
// each as a file of its own name, so tests can add and remove objects of a
// selection by adding and removing files. filePermission applies; nothing
// else goes with a selector. Without a data directory a selector selects
// nothing.

// dirBatch is how many directory entries one read returns: the listing's
// page, counted against the file limit before the next.
const dirBatch = 100

func validateSelector(i int, s objectSpec) (object, error) {
	o := object{name: "objectNamePrefix " + s.ObjectNamePrefix, prefix: s.ObjectNamePrefix}
	where := "objects[" + strconv.Itoa(i) + "] (objectNamePrefix)"
	switch {
	case !safeName(s.ObjectNamePrefix, maxNameLen):
		return o, provider.InvalidArgument("%s: objectNamePrefix must be 1-%d characters of A-Z a-z 0-9 . _ - and must not start with '.'", where, maxNameLen)
	case s.ObjectName != "" || s.ObjectAlias != "" || s.ObjectVersion != "" || s.ObjectEncoding != "" || s.Value != nil || s.Generate != nil || s.Seed != nil:
		return o, provider.InvalidArgument("%s: a selector takes only filePermission: objectName, objectAlias, objectVersion, objectEncoding, value, generate and seed do not go with it", where)
	}
	if s.FilePermission != "" {
		m, err := provider.ParseFileMode(s.FilePermission)
		if err != nil {
			return o, provider.InvalidArgument("%s: filePermission %v", where, err)
		}
		o.mode, o.modeSet = m, true
	}
	return o, nil
}

// expand replaces the selector items of objs with one object per selected
// data file, reading the namespace directory in batches and counting the
// selection against the file limit as it goes. Collisions with named
// objects or between selectors are InvalidArgument naming both.
func (d nsDir) expand(objs []object, maxFiles int) ([]object, error) {
	if !slices.ContainsFunc(objs, func(o object) bool { return o.prefix != "" }) {
		return objs, nil
	}
	var out []object
	owner := map[string]string{} // file -> what writes it
	for _, o := range objs {
		if o.prefix == "" {
			out = append(out, o)
			owner[o.path] = "object " + o.name
		}
	}
	names, err := d.list(func(n int) error {
		if len(out)+n > maxFiles {
			return provider.Errorf(codes.ResourceExhausted, "fake backend: the data files of namespace %s select more than %d objects, the per-volume file limit (driver flag --max-files)", d.ns, maxFiles)
		}
		return nil
	}, objs)
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		for _, sel := range objs {
			if sel.prefix == "" || !strings.HasPrefix(name, sel.prefix) {
				continue
			}
			if prev, dup := owner[name]; dup {
				return nil, provider.InvalidArgument("fake backend: %s and %s both write file %q: narrow the selector or set a distinct objectAlias", prev, sel.name, name)
			}
			for p, what := range owner {
				if strings.HasPrefix(p, name+"/") {
					return nil, provider.InvalidArgument("fake backend: %s writes %q, a directory of %s's file %q", sel.name, name, what, p)
				}
			}
			owner[name] = sel.name
			if len(out) >= maxFiles {
				return nil, provider.Errorf(codes.ResourceExhausted, "fake backend: %s selects more than %d objects with the named ones, the per-volume file limit (driver flag --max-files)", sel.name, maxFiles)
			}
			o := sel
			o.name, o.path, o.prefix = name, name, ""
			out = append(out, o)
		}
	}
	return out, nil
}

// list returns the sorted names of the namespace's data files that some
// selector of objs selects, read dirBatch entries at a time; check is called
// with the count so far after each batch and ends the listing on an error.
func (d nsDir) list(check func(int) error, objs []object) ([]string, error) {
	if d.fd < 0 {
		return nil, nil
	}
	fd, err := unix.Dup(d.fd)
	if err != nil {
		return nil, provider.Unavailable("fake backend: cannot read data directory %s: %v", d.ns, err)
	}
	dir := os.NewFile(uintptr(fd), d.ns)
	defer dir.Close()
	var names []string
	for {
		entries, err := dir.ReadDir(dirBatch)
		for _, e := range entries {
			name := e.Name()
			if !e.Type().IsRegular() || !safeName(name, maxNameLen) {
				continue // links, directories and temporary '.' files are never objects
			}
			if slices.ContainsFunc(objs, func(o object) bool { return o.prefix != "" && strings.HasPrefix(name, o.prefix) }) {
				names = append(names, name)
			}
		}
		if cerr := check(len(names)); cerr != nil {
			return nil, cerr
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, provider.Unavailable("fake backend: cannot read data directory %s: %v", d.ns, err)
		}
	}
	slices.Sort(names)
	return names, nil
}
