package provider

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// DecodeObjects decodes an `objects` class parameter into out, a pointer to a
// slice of the backend's object struct, whose fields carry `yaml` tags. Two
// spellings are accepted:
//
//   - the Azure provider's: a YAML map with key `array` whose items are YAML
//     documents in strings (`array:\n  - |\n    objectName: a`);
//   - a plain YAML list of maps (`- objectName: a`).
//
// Like the Azure provider (which decodes with yaml.v3), a string field takes
// the scalar as written, so an unquoted `filePermission: 0644` stays "0644"
// rather than becoming the YAML 1.1 octal number 420. Unknown fields are
// errors, so a misspelt key is reported, not ignored.
func DecodeObjects(param string, out any) error {
	if strings.TrimSpace(param) == "" {
		return InvalidArgument("parameter objects is empty: list at least one object")
	}
	root, err := ParseParam("objects", param)
	if err != nil {
		return err
	}
	list, err := objectList(root)
	if err != nil {
		return err
	}
	slice := reflect.ValueOf(out)
	if slice.Kind() != reflect.Pointer || slice.Elem().Kind() != reflect.Slice {
		panic("provider.DecodeObjects: out must be a pointer to a slice")
	}
	items := reflect.MakeSlice(slice.Elem().Type(), len(list.Content), len(list.Content))
	for i, item := range list.Content {
		if err := decodeObject(item, items.Index(i).Addr().Interface()); err != nil {
			return InvalidArgument("parameter objects: objects[%d]: %s", i, err)
		}
	}
	slice.Elem().Set(items)
	return nil
}

// decodeObject decodes one object map into out, naming the field at fault.
func decodeObject(item *yaml.Node, out any) error {
	if item.Kind != yaml.MappingNode {
		return fmt.Errorf("must be a map of fields (objectName: ...), not %s", kindName(item))
	}
	known := yamlFields(reflect.TypeOf(out).Elem())
	for j := 0; j+1 < len(item.Content); j += 2 {
		key, value := item.Content[j], item.Content[j+1]
		if _, ok := known[key.Value]; !ok {
			names := make([]string, 0, len(known))
			for k := range known {
				names = append(names, k)
			}
			sort.Strings(names)
			return fmt.Errorf("unknown field %q; known fields: %s", Clip(key.Value, 64), strings.Join(names, ", "))
		}
		pair := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: []*yaml.Node{key, value}}
		if err := pair.Decode(out); err != nil {
			return fmt.Errorf("field %s has the wrong type: got %s", key.Value, kindName(value))
		}
	}
	return nil
}

// yamlFields lists the yaml names of a struct's fields.
func yamlFields(t reflect.Type) map[string]struct{} {
	names := map[string]struct{}{}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return names
	}
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			names[name] = struct{}{}
		}
	}
	return names
}

// kindName describes a YAML value without quoting it (it may be a secret).
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a map"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.ShortTag() {
	case "!!null":
		return "empty"
	case "!!bool":
		return "true or false"
	case "!!int", "!!float":
		return "a number"
	}
	return "text"
}

// objectList returns the sequence of object maps in either spelling.
func objectList(root *yaml.Node) (*yaml.Node, error) {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	switch doc.Kind {
	case yaml.SequenceNode:
		return doc, nil
	case yaml.MappingNode:
		if len(doc.Content) != 2 || doc.Content[0].Value != "array" || doc.Content[1].Kind != yaml.SequenceNode {
			return nil, InvalidArgument("parameter objects must be a list of objects, or a map with the single key `array` listing YAML documents")
		}
		if _, err := ArrayItemsNodes("objects", doc.Content[1].Content); err != nil {
			return nil, err
		}
		list := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for i, item := range doc.Content[1].Content {
			if item.Kind != yaml.ScalarNode {
				return nil, InvalidArgument("parameter objects: objects[%d] must be a YAML document in a string (`- |`)", i)
			}
			obj, err := ParseParam(fmt.Sprintf("objects[%d]", i), item.Value)
			if err != nil {
				return nil, err
			}
			if len(obj.Content) != 1 || obj.Content[0].Kind != yaml.MappingNode {
				return nil, InvalidArgument("parameter objects: objects[%d] must be a map of object fields", i)
			}
			list.Content = append(list.Content, obj.Content[0])
		}
		return list, nil
	}
	return nil, InvalidArgument("parameter objects must be a list of objects")
}

var (
	goTypeName   = regexp.MustCompile(` (in|into) (type )?[\[\]*\w.]+`)
	wrongType    = regexp.MustCompile("cannot unmarshal (!!\\w+) `[^`]*`")
	quotedScalar = regexp.MustCompile("`[^`]*`")
)

// cleanYAMLError keeps parser messages to one line without Go type names or
// quoted values (a value may be a secret); field names and lines stay.
func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) {
		msg = strings.Join(te.Errors, "; ")
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	msg = goTypeName.ReplaceAllString(msg, "")
	msg = wrongType.ReplaceAllString(msg, "a value of the wrong type ($1)")
	msg = quotedScalar.ReplaceAllString(msg, "a value")
	msg = strings.Join(strings.Fields(msg), " ")
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return fmt.Sprint(msg)
}
