package fake

import (
	"encoding/base64"
	"encoding/hex"
	"os"
	"strconv"
	"strings"

	"github.com/secretfs/secretfs/provider"
)

// Limits that keep one class from costing the node unbounded memory.
const (
	maxObjects      = 1024
	maxGenerate     = 64 << 10 // bytes; Key Vault itself stops at 25 KiB
	maxNameLen      = 127
	maxAliasLen     = 1024
	maxComponentLen = 255
	maxVersionLen   = 127
)

// objectSpec is one item of the `objects` parameter as written by the class
// author. Pointers tell "absent" from "empty". Scalars are taken as written
// (provider.DecodeObjects), so an unquoted `filePermission: 0644` is "0644",
// as with the Azure provider.
type objectSpec struct {
	ObjectName     string  `yaml:"objectName"`
	ObjectAlias    string  `yaml:"objectAlias"`
	ObjectVersion  string  `yaml:"objectVersion"`
	ObjectEncoding string  `yaml:"objectEncoding"`
	FilePermission string  `yaml:"filePermission"`
	Value          *string `yaml:"value"`
	Generate       *string `yaml:"generate"`
	Seed           *string `yaml:"seed"`
	// ObjectNamePrefix, instead of objectName, selects the data files of
	// the namespace whose names start with it (select.go).
	ObjectNamePrefix string `yaml:"objectNamePrefix"`
}

// object is a validated objectSpec.
type object struct {
	name    string
	path    string // file path relative to the volume root
	mode    os.FileMode
	modeSet bool // false: use the request's DefaultMode
	version string
	value   []byte // decoded literal; nil when not set
	hasVal  bool
	gen     int // bytes to generate; 0 when not set
	seed    string
	prefix  string // a selector: the data files whose names start with it
}

// parseObjects decodes and validates the `objects` parameter. Every error is
// InvalidArgument and names the item and the field; none quotes a value.
func parseObjects(param string) ([]object, error) {
	var items []objectSpec
	if err := provider.DecodeObjects(param, &items); err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, provider.InvalidArgument("parameter objects lists no objects: add at least one item with objectName")
	}
	if len(items) > maxObjects {
		return nil, provider.InvalidArgument("parameter objects lists %d objects; at most %d are allowed", len(items), maxObjects)
	}
	objs := make([]object, 0, len(items))
	paths := make(map[string]int, len(items))
	for i, s := range items {
		o, err := validateObject(i, s)
		if err != nil {
			return nil, err
		}
		if o.prefix != "" {
			objs = append(objs, o) // its file names are known once the data directory is read
			continue
		}
		if j, dup := paths[o.path]; dup {
			return nil, provider.InvalidArgument("objects[%d] (%s): file name %q is already used by objects[%d]; set a distinct objectAlias", i, o.name, o.path, j)
		}
		paths[o.path] = i
		objs = append(objs, o)
	}
	// A path may not be both a file and a directory ("a" and "a/b").
	for p, i := range paths {
		for dir := parentDir(p); dir != ""; dir = parentDir(dir) {
			if j, clash := paths[dir]; clash {
				return nil, provider.InvalidArgument("objects[%d] (%s): file name %q is a directory of objects[%d]'s file %q; choose a different objectAlias",
					j, objs[j].name, dir, i, p)
			}
		}
	}
	return objs, nil
}

func validateObject(i int, s objectSpec) (object, error) {
	o := object{name: s.ObjectName, version: s.ObjectVersion}
	if s.ObjectNamePrefix != "" {
		return validateSelector(i, s)
	}
	if s.ObjectName == "" {
		return o, provider.InvalidArgument("objects[%d]: objectName is required", i)
	}
	if !safeName(s.ObjectName, maxNameLen) {
		return o, provider.InvalidArgument("objects[%d]: objectName must be 1-%d characters of A-Z a-z 0-9 . _ - and must not start with '.'", i, maxNameLen)
	}
	where := func(field string) string { return "objects[" + strconv.Itoa(i) + "] (" + s.ObjectName + "): " + field }

	o.path = s.ObjectName
	if s.ObjectAlias != "" {
		if err := validAlias(s.ObjectAlias); err != "" {
			return o, provider.InvalidArgument("%s %s", where("objectAlias"), err)
		}
		o.path = s.ObjectAlias
	}
	if s.ObjectVersion != "" && !safeName(s.ObjectVersion, maxVersionLen) {
		return o, provider.InvalidArgument("%s must be 1-%d characters of A-Z a-z 0-9 . _ - and must not start with '.'", where("objectVersion"), maxVersionLen)
	}
	if s.FilePermission != "" {
		m, err := provider.ParseFileMode(s.FilePermission)
		if err != nil {
			return o, provider.InvalidArgument("%s %v", where("filePermission"), err)
		}
		o.mode, o.modeSet = m, true
	}

	switch {
	case s.Value != nil && s.Generate != nil:
		return o, provider.InvalidArgument("%s set either value or generate, not both", where("value"))
	case s.Seed != nil && s.Generate == nil:
		return o, provider.InvalidArgument("%s is only used with generate", where("seed"))
	case s.ObjectEncoding != "" && s.Value == nil:
		return o, provider.InvalidArgument("%s is only used with value", where("objectEncoding"))
	}
	if s.Value != nil {
		v, err := decodeValue(*s.Value, s.ObjectEncoding)
		if err != "" {
			return o, provider.InvalidArgument("%s %s", where("value"), err)
		}
		o.value, o.hasVal = v, true
	}
	if s.Generate != nil {
		n, err := strconv.Atoi(strings.TrimSpace(*s.Generate))
		if err != nil || n < 1 || n > maxGenerate {
			return o, provider.InvalidArgument("%s must be a number of bytes from 1 to %d", where("generate"), maxGenerate)
		}
		o.gen = n
		if s.Seed != nil {
			o.seed = *s.Seed
		}
	}
	return o, nil
}

// safeName reports whether s is 1..max characters of [A-Za-z0-9._-] and does
// not start with '.', so it can never be "", ".", ".." or contain a '/'.
func safeName(s string, max int) bool {
	return len(s) > 0 && len(s) <= max && s[0] != '.' && safeChars(s)
}

func safeChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validAlias checks a relative, clean, slash-separated file path. Components
// starting with ".." are reserved for the driver's atomic writer (..data).
// It returns what is wrong, or "".
func validAlias(a string) string {
	if len(a) > maxAliasLen {
		return "is longer than " + strconv.Itoa(maxAliasLen) + " characters"
	}
	if strings.HasPrefix(a, "/") {
		return "must be a relative path, not start with '/'"
	}
	for _, c := range strings.Split(a, "/") {
		switch {
		case c == "":
			return "must not contain empty path components ('//' or a trailing '/')"
		case c == "." || c == "..":
			return "must not contain '.' or '..' path components"
		case strings.HasPrefix(c, ".."):
			return "must not have a path component starting with '..' (reserved by the driver)"
		case len(c) > maxComponentLen:
			return "has a path component longer than " + strconv.Itoa(maxComponentLen) + " characters"
		case !safeChars(c):
			return "may contain only A-Z a-z 0-9 . _ - and '/' between path components"
		}
	}
	return ""
}

// decodeValue applies objectEncoding to a literal value, as the Azure
// provider does for secrets. Errors never quote the value.
func decodeValue(v, enc string) ([]byte, string) {
	switch strings.ToLower(enc) {
	case "", "utf-8", "utf8":
		return []byte(v), ""
	case "base64":
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, "is not valid base64 (objectEncoding: base64)"
		}
		return b, ""
	case "hex":
		b, err := hex.DecodeString(v)
		if err != nil {
			return nil, "is not valid hex (objectEncoding: hex)"
		}
		return b, ""
	}
	return nil, "has objectEncoding " + strconv.Quote(enc) + "; use utf-8, base64 or hex"
}

func parentDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}
