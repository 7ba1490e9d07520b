package content

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/provider"
)

// Extracting a key path's value from a JSON or YAML document, with what
// decoding and printing allocate charged to the volume's budget.Work first.

// Extract returns the value at p in doc, a JSON or YAML document: text
// scalars as they are, numbers and booleans as written, null as nothing,
// maps and lists as compact JSON. A missing key or index is a NotFound
// error, anything else InvalidArgument; no error holds any part of doc.
// Parsing, alias expansion and printing are charged to w before they
// allocate (the charge of a parse is an upper bound found by a scan that
// allocates nothing); the result is at most what w has left.
func (p KeyPath) Extract(doc []byte, w *budget.Work) ([]byte, error) {
	trimmed := bytes.TrimSpace(doc)
	if len(trimmed) == 0 {
		return nil, provider.InvalidArgument("the value is empty, not a JSON or YAML document")
	}
	if err := w.StepBytes(len(trimmed)); err != nil {
		return nil, err
	}
	var out []byte
	var err error
	if json.Valid(trimmed) {
		out, err = p.extractJSON(trimmed, w)
	} else {
		out, err = p.extractYAML(trimmed, w)
	}
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > w.Left() {
		return nil, provider.Errorf(codes.ResourceExhausted, "the value at %s is %d bytes, more than the %d this volume has room for (driver flag %s)", p.text, len(out), w.Left(), budget.BytesFlag)
	}
	return out, nil
}

// jsonValueBytes is what encoding/json allocates per value it decodes into
// an interface (the value, its boxing, map and slice slots), rounded up.
const jsonValueBytes = 96

// jsonValues bounds the values in a JSON document: each after the first
// follows a , : [ or {.
func jsonValues(doc []byte) int {
	n := 1
	for _, c := range doc {
		switch c {
		case ',', ':', '[', '{':
			n++
		}
	}
	return n
}

// jsonPrinted bounds the compact JSON of v: every byte of text escaped to
// at most 6, and punctuation per value.
func jsonPrinted(v any) int {
	switch x := v.(type) {
	case string:
		return 6*len(x) + 2
	case json.Number:
		return len(x)
	case map[string]any:
		n := 2
		for k, e := range x {
			n += 6*len(k) + 4 + jsonPrinted(e)
		}
		return n
	case []any:
		n := 2
		for _, e := range x {
			n += 1 + jsonPrinted(e)
		}
		return n
	}
	return 8 // null, true, false, numbers of YAML
}

func (p KeyPath) extractJSON(doc []byte, w *budget.Work) ([]byte, error) {
	if err := w.Charge(int64(jsonValues(doc))*jsonValueBytes + int64(len(doc))); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, provider.InvalidArgument("the value is not valid JSON")
	}
	for i, st := range p.steps {
		switch cur := v.(type) {
		case map[string]any:
			if st.key == nil {
				return nil, provider.InvalidArgument("%s is a map, not a list: select a key, not an index", p.prefix(i))
			}
			next, ok := cur[*st.key]
			if !ok {
				return nil, provider.NotFound("no key %s in the value", p.describe(i))
			}
			v = next
		case []any:
			if st.key != nil {
				return nil, provider.InvalidArgument("%s is a list, not a map: select an index such as [0]", p.prefix(i))
			}
			if st.index >= len(cur) {
				return nil, provider.NotFound("no item %s in the value: the list has %d items", p.describe(i), len(cur))
			}
			v = cur[st.index]
		default:
			return nil, provider.InvalidArgument("%s is %s, not a map or list", p.prefix(i), jsonKind(cur))
		}
	}
	switch x := v.(type) {
	case nil:
		return []byte{}, nil
	case string:
		return []byte(x), nil
	case json.Number:
		return []byte(x.String()), nil
	case bool:
		return []byte(strconv.FormatBool(x)), nil
	}
	if err := w.Charge(int64(jsonPrinted(v))); err != nil {
		return nil, err
	}
	return marshal(v)
}

// prefix names the part of the path before step i ("the value" for none).
func (p KeyPath) prefix(i int) string {
	if i == 0 {
		return "the value"
	}
	return p.describe(i - 1)
}

func jsonKind(v any) string {
	switch v.(type) {
	case string:
		return "text"
	case json.Number:
		return "a number"
	case bool:
		return "true or false"
	case nil:
		return "null"
	}
	return "a value"
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

func (p KeyPath) extractYAML(doc []byte, w *budget.Work) ([]byte, error) {
	if err := w.Charge(int64(provider.YAMLNodes(string(doc)))*provider.YAMLNodeBytes + int64(len(doc))); err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil {
		msg := "the value is neither valid JSON nor valid YAML"
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			msg += " (YAML error on line " + m[1] + ")"
		}
		return nil, provider.InvalidArgument("%s", msg)
	}
	n := &root
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	for i, st := range p.steps {
		n = resolveAlias(n)
		switch n.Kind {
		case yaml.MappingNode:
			if st.key == nil {
				return nil, provider.InvalidArgument("%s is a map, not a list: select a key, not an index", p.prefix(i))
			}
			var next *yaml.Node
			for j := 0; j+1 < len(n.Content); j += 2 {
				if k := resolveAlias(n.Content[j]); k.Kind == yaml.ScalarNode && k.Value == *st.key {
					next = n.Content[j+1]
					break
				}
			}
			if next == nil {
				return nil, provider.NotFound("no key %s in the value", p.describe(i))
			}
			n = next
		case yaml.SequenceNode:
			if st.key != nil {
				return nil, provider.InvalidArgument("%s is a list, not a map: select an index such as [0]", p.prefix(i))
			}
			if st.index >= len(n.Content) {
				return nil, provider.NotFound("no item %s in the value: the list has %d items", p.describe(i), len(n.Content))
			}
			n = n.Content[st.index]
		default:
			return nil, provider.InvalidArgument("%s is %s, not a map or list", p.prefix(i), yamlKind(n))
		}
	}
	n = resolveAlias(n)
	if n.Kind == yaml.ScalarNode {
		if n.ShortTag() == "!!null" {
			return []byte{}, nil
		}
		return []byte(n.Value), nil
	}
	// Decoding expands aliases: a small document can name one large value
	// thousands of times. Charge the expanded size before decoding and
	// printing it as JSON.
	nodes, text, err := expanded(n, w)
	if err != nil {
		return nil, provider.InvalidArgument("the value at %s: %v", p.text, err)
	}
	if err := w.Charge(nodes*provider.YAMLNodeBytes + 7*text); err != nil {
		return nil, err
	}
	var v any
	if err := n.Decode(&v); err != nil {
		return nil, provider.InvalidArgument("the value at %s cannot be read as data", p.text)
	}
	v, err = jsonable(v, 0)
	if err != nil {
		return nil, provider.InvalidArgument("the value at %s: %v", p.text, err)
	}
	return marshal(v)
}

// expanded returns the nodes and bytes of text n stands for with every alias
// replaced by what it names, each anchored node measured once; an alias
// that names a node it is inside of is an error. Each node measured is a
// step.
func expanded(n *yaml.Node, w *budget.Work) (nodes, text int64, err error) {
	type size struct{ nodes, text int64 }
	memo := map[*yaml.Node]*size{}
	onPath := map[*yaml.Node]bool{}
	const huge = 1 << 50
	var measure func(n *yaml.Node, depth int) (size, error)
	measure = func(n *yaml.Node, depth int) (size, error) {
		if depth > maxDepth {
			return size{}, fmt.Errorf("nested more than %d levels deep", maxDepth)
		}
		if s, ok := memo[n]; ok {
			return *s, nil
		}
		if onPath[n] {
			return size{}, fmt.Errorf("an alias refers to a value it is part of")
		}
		if err := w.Step(1); err != nil {
			return size{}, err
		}
		onPath[n] = true
		defer delete(onPath, n)
		s := size{nodes: 1, text: int64(len(n.Value))}
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			a, err := measure(n.Alias, depth+1)
			if err != nil {
				return size{}, err
			}
			s = a
		}
		for _, c := range n.Content {
			cs, err := measure(c, depth+1)
			if err != nil {
				return size{}, err
			}
			s.nodes, s.text = min(s.nodes+cs.nodes, huge), min(s.text+cs.text, huge)
		}
		if n.Anchor != "" || n.Kind == yaml.AliasNode {
			memo[n] = &s
		}
		return s, nil
	}
	s, err := measure(n, 0)
	return s.nodes, s.text, err
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func yamlKind(n *yaml.Node) string {
	switch n.ShortTag() {
	case "!!null":
		return "null"
	case "!!bool":
		return "true or false"
	case "!!int", "!!float":
		return "a number"
	}
	return "text"
}

// jsonable turns YAML's map[any]any into maps JSON can print.
func jsonable(v any, depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested more than %d levels deep", maxDepth)
	}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e, depth+1)
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			c, err := jsonable(e, depth+1)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = c
		}
		return m, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e, depth+1)
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	}
	return v, nil
}

// marshal prints v as compact JSON without HTML escaping.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, provider.InvalidArgument("the selected value cannot be printed as JSON")
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}
