package provider

import (
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// DecodeObjects decodes an `objects` class parameter into out, a pointer to a
// slice of the backend's object struct. Two spellings are accepted:
//
//   - the Azure provider's: a YAML map with key `array` whose items are YAML
//     documents in strings (`array:\n  - |\n    objectName: a`);
//   - a plain YAML list of maps (`- objectName: a`).
//
// Unknown fields are errors, so a misspelt key is reported, not ignored.
func DecodeObjects(param string, out any) error {
	if strings.TrimSpace(param) == "" {
		return InvalidArgument("parameter objects is empty: list at least one object")
	}
	var wrapped struct {
		Array []string `json:"array"`
	}
	if err := yaml.UnmarshalStrict([]byte(param), &wrapped); err == nil && wrapped.Array != nil {
		items := make([]string, 0, len(wrapped.Array))
		for i, doc := range wrapped.Array {
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				return InvalidArgument("parameter objects: item %d is not valid YAML: %v", i, cleanYAMLError(err))
			}
			items = append(items, string(js))
		}
		param = "[" + strings.Join(items, ",") + "]"
	}
	if err := yaml.UnmarshalStrict([]byte(param), out); err != nil {
		return InvalidArgument("parameter objects is not a list of objects: %v", cleanYAMLError(err))
	}
	return nil
}

// cleanYAMLError keeps parser messages to one line; they quote only field
// names and positions, never whole values.
func cleanYAMLError(err error) string {
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.TrimPrefix(msg, "error unmarshaling JSON: ")
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return fmt.Sprint(msg)
}
