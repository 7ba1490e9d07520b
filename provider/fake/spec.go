package fake

import (
	"bytes"
	"encoding/json"
	"sort"
	"strconv"
	"strings"

	"github.com/secretfs/secretfs/provider"
)

// Object fields, in the order they are checked.
var objectFields = []string{
	"objectName", "objectAlias", "objectVersion", "objectEncoding", "filePermission", "value", "generate", "seed",
}

// decodeSpec turns one raw item into an objectSpec. String fields must be
// YAML strings: an unquoted 0644, yes or 1e3 is reported, not reinterpreted.
func decodeSpec(i int, item map[string]json.RawMessage) (objectSpec, error) {
	var s objectSpec
	where := "objects[" + strconv.Itoa(i) + "]"

	var unknown []string
	for k := range item {
		if !isObjectField(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return s, provider.InvalidArgument("%s: unknown field %q; known fields: %s", where, truncate(unknown[0], 64), strings.Join(objectFields, ", "))
	}

	str := func(field string) (*string, error) {
		raw, ok := item[field]
		if !ok {
			return nil, nil
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || raw[0] != '"' {
			kind := jsonKind(raw)
			if kind == "null" {
				return nil, provider.InvalidArgument("%s: %s is empty; remove it, or write %s: \"\" for an empty string", where, field, field)
			}
			hint := ""
			if field == "filePermission" {
				hint = " such as \"0644\" (unquoted, YAML reads 0644 as the number 420)"
			}
			return nil, provider.InvalidArgument("%s: %s must be a quoted string%s, not a %s", where, field, hint, kind)
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, provider.InvalidArgument("%s: %s is not a valid string", where, field)
		}
		return &v, nil
	}
	plain := func(field string) (string, error) {
		v, err := str(field)
		if v == nil || err != nil {
			return "", err
		}
		return *v, nil
	}

	var err error
	if s.ObjectName, err = plain("objectName"); err != nil {
		return s, err
	}
	if s.ObjectName != "" && safeName(s.ObjectName, maxNameLen) {
		where += " (" + s.ObjectName + ")"
	}
	if s.ObjectAlias, err = plain("objectAlias"); err != nil {
		return s, err
	}
	if s.ObjectVersion, err = plain("objectVersion"); err != nil {
		return s, err
	}
	if s.ObjectEncoding, err = plain("objectEncoding"); err != nil {
		return s, err
	}
	if s.FilePermission, err = plain("filePermission"); err != nil {
		return s, err
	}
	if s.Value, err = str("value"); err != nil {
		return s, err
	}
	if s.Seed, err = str("seed"); err != nil {
		return s, err
	}
	if raw, ok := item["generate"]; ok {
		// A number, or a quoted number.
		text := string(bytes.Trim(bytes.TrimSpace(raw), `"`))
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return s, provider.InvalidArgument("%s: generate must be a whole number of bytes from 1 to %d", where, maxGenerate)
		}
		s.Generate = &n
	}
	return s, nil
}

func isObjectField(k string) bool {
	for _, f := range objectFields {
		if k == f {
			return true
		}
	}
	return false
}

func jsonKind(raw []byte) string {
	switch {
	case len(raw) == 0 || bytes.Equal(raw, []byte("null")):
		return "null"
	case raw[0] == '{':
		return "map"
	case raw[0] == '[':
		return "list"
	case bytes.Equal(raw, []byte("true")) || bytes.Equal(raw, []byte("false")):
		return "boolean (quote yes/no/on/off/true/false)"
	}
	return "number (quote it)"
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
