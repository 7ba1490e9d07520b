// Package content is what the driver does with a volume's objects between
// the backend and the tmpfs, the same for every provider: it takes its own
// class parameters out before the provider sees them, fetches objects marked
// optional or carrying a key path one by one (so that a missing optional
// object leaves only itself out), extracts keys from JSON or YAML values,
// and renders templated files.
//
// Class parameters of this package (prefixed class.Prefix, "secretfs.dev/";
// the class's serving settings, class.SettingParams, are taken out here too
// but read by package class; any other name under the prefix is an error):
//
//	secretfs.dev/templates         YAML list of {path, template, mode}
//	secretfs.dev/hideObjects       "true": write only the templated files
//
// Fields of an item of the objects parameter (Azure, Vault, AWS, fake,
// kubernetes) or of the secrets parameter (GCP), removed before the
// provider sees them:
//
//	optional: true     a NotFound for this object leaves it out
//	keyPath: a.b[0]    write the value at this path of a JSON or YAML object
//
// The package does not import the driver; the driver calls Parse once per
// class, Fetch as the backend call, and Render before its size checks.
package content

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// Prefix starts every class parameter of secretfs (class.Prefix).
const Prefix = class.Prefix

// Class parameters of this package.
const (
	ParamTemplates   = Prefix + "templates"
	ParamHideObjects = Prefix + "hideObjects"
)

// Object fields.
const (
	FieldOptional = "optional"
	FieldKeyPath  = "keyPath"
)

// maxSpecialObjects bounds the objects of a class that set FieldOptional or
// FieldKeyPath: each is fetched on its own, a backend call (and, for the
// node, the encoding and parse of its parameters) at every fetch.
const maxSpecialObjects = 64

// objectParams are the parameters that list objects, in the order looked for.
var objectParams = []string{"objects", "secrets"}

// Plan is what a class asks of this package. The zero Plan (and nil) does
// nothing: the provider gets the parameters as they are.
type Plan struct {
	// params go to the provider: the class's without this package's.
	params map[string]string
	// objectsParam names the parameter rewritten per object ("" if none).
	objectsParam string
	objects      []object
	arrayForm    bool
	templates    []*Template
	hideObjects  bool
	copied       bool // params is this Plan's own map
}

// object is one item of the objects parameter with this package's fields
// taken out.
type object struct {
	name     string     // for messages: objects[i] (objectName x)
	node     *yaml.Node // the item without optional/keyPath
	optional bool
	keyPath  *KeyPath
}

func (o *object) special() bool { return o.optional || o.keyPath != nil }

// ForClass reads cls's content settings (Parse); nil for a class without
// any. Its errors name the class.
func ForClass(cls *class.Class, w *budget.Work) (*Plan, error) {
	p, err := Parse(cls.Parameters, w)
	if err != nil {
		return nil, provider.Errorf(provider.CodeOf(err), "SecretProviderClass %q in namespace %q: %s", cls.Name, cls.Namespace, err.Error())
	}
	return p, nil
}

// Parse reads a class's parameters. A class that uses none of this package
// gets a nil Plan (every method of which is fine to call): its parameters
// go to the provider as they are, and nothing is allocated. Templates not
// parsed before are parsed in w's turn among the node's computations (a
// nil w: at once).
func Parse(params map[string]string, w *budget.Work) (*Plan, error) {
	own := false
	for k := range params {
		if strings.HasPrefix(k, Prefix) {
			own = true
			break
		}
	}
	if !own && !mayHaveFields(params) {
		return nil, nil // the common case, without allocating
	}
	p := &Plan{params: params}
	if own {
		p.params, p.copied = maps.Clone(params), true
		if err := p.parseOwn(params, w); err != nil {
			return nil, err
		}
	}
	if err := p.parseObjects(w); err != nil {
		return nil, err
	}
	if !own && p.objects == nil {
		return nil, nil // nothing of ours: the provider gets params as they are
	}
	return p, nil
}

func (p *Plan) parseOwn(params map[string]string, w *budget.Work) error {
	keys := make([]string, 0, len(params))
	for k := range params {
		if strings.HasPrefix(k, Prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := params[k]
		delete(p.params, k)
		var err error
		switch k {
		case ParamTemplates:
			p.templates, err = memo.get(v, w)
		case ParamHideObjects:
			p.hideObjects, err = strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				err = fmt.Errorf("must be true or false")
			}
		default:
			if slices.Contains(class.SettingParams, k) {
				continue // read by package class
			}
			return provider.InvalidArgument("class parameter %q is not one secretfs knows; known: %s, %s, %s",
				clip(k), ParamTemplates, ParamHideObjects, strings.Join(class.SettingParams, ", "))
		}
		if err != nil {
			code := codes.InvalidArgument
			if c := provider.CodeOf(err); c == codes.DeadlineExceeded || c == codes.Canceled {
				code = c // waited for its turn past the request
			}
			return provider.Errorf(code, "class parameter %s: %v", k, err)
		}
	}
	if p.hideObjects && len(p.templates) == 0 {
		return provider.InvalidArgument("class parameter %s is true but %s declares no file: nothing would be written", ParamHideObjects, ParamTemplates)
	}
	return nil
}

// templateSpec is one item of the templates parameter.
type templateSpec struct {
	Path     string `yaml:"path"`
	Template string `yaml:"template"`
	Mode     string `yaml:"mode"`
}

func parseTemplates(v string) ([]*Template, error) {
	if len(v) > maxTemplateSource {
		return nil, fmt.Errorf("is %d bytes; the templates of a class are at most %d", len(v), maxTemplateSource)
	}
	// Template text is full of YAML indicators, so the token scan of
	// provider.YAMLNodes would refuse ordinary templates; the size cap bounds
	// the parse instead (at most 64 KiB: about 8 MiB of nodes, one parse at
	// a time, see memo).
	var specs []templateSpec
	dec := yaml.NewDecoder(strings.NewReader(v))
	dec.KnownFields(true)
	if err := dec.Decode(&specs); err != nil {
		return nil, fmt.Errorf("must be a YAML list of {path, template, mode}: %s", yamlError(err))
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("declares no file")
	}
	if len(specs) > maxTemplates {
		return nil, fmt.Errorf("declares %d files; at most %d", len(specs), maxTemplates)
	}
	// YAML aliases repeat a template without repeating its text: what is
	// parsed is the decoded source, held to the same bound.
	total := 0
	for _, s := range specs {
		total += len(s.Template)
	}
	if total > maxTemplateSource {
		return nil, fmt.Errorf("holds %d bytes of template source (YAML aliases count at each use); the templates of a class are at most %d", total, maxTemplateSource)
	}
	seen := map[string]bool{}
	out := make([]*Template, 0, len(specs))
	for i, s := range specs {
		if s.Path == "" {
			return nil, fmt.Errorf("item %d has no path", i)
		}
		if seen[s.Path] {
			return nil, fmt.Errorf("path %q is declared twice", clip(s.Path))
		}
		seen[s.Path] = true
		tp := &Template{Path: s.Path}
		if s.Mode != "" {
			m, err := strconv.ParseUint(s.Mode, 8, 32)
			if err != nil || m > 0o777 {
				return nil, fmt.Errorf("template %q: mode %q is not an octal file mode such as 0400", clip(s.Path), clip(s.Mode))
			}
			tp.Mode = os.FileMode(m)
		}
		t, steps, err := parseTemplate(s.Path, s.Template)
		if err != nil {
			return nil, fmt.Errorf("template %q: %v", clip(s.Path), err)
		}
		tp.t, tp.steps = t, steps
		out = append(out, tp)
	}
	return out, nil
}

// yamlError keeps the line of a YAML error and nothing of the value.
func yamlError(err error) string {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		return "error on line " + m[1]
	}
	return "not valid YAML"
}

// parseObjects takes optional and keyPath out of the objects parameter.
// Parameters stay untouched unless some object uses them.
func (p *Plan) parseObjects(w *budget.Work) error {
	for _, name := range objectParams {
		src, ok := p.params[name]
		if !ok {
			continue
		}
		if !strings.Contains(src, FieldOptional) && !strings.Contains(src, FieldKeyPath) {
			return nil // nothing of ours in it
		}
		// The parse, and those of the items of the array form, are
		// computations over tenant input: charged (nodes, the re-encoded
		// parameter) and run in the volume's turn.
		if err := chargeParse(w, provider.YAMLNodes(src), 2*len(src)); err != nil {
			return err
		}
		end, err := w.Turn()
		if err != nil {
			return err
		}
		defer end()
		root, err := provider.ParseParam(name, src)
		if err != nil {
			if provider.CodeOf(err) == codes.ResourceExhausted {
				return err
			}
			return nil // the provider reports its own parameter
		}
		items, array, ok, err := objectItems(name, root, w)
		if err != nil || !ok {
			return err
		}
		objs := make([]object, len(items))
		special := 0
		for i, item := range items {
			o, err := takeFields(name, i, item)
			if err != nil {
				return err
			}
			objs[i] = o
			if o.special() {
				special++
			}
		}
		if special > maxSpecialObjects {
			return provider.InvalidArgument("parameter %s: %d objects set %s or %s, at most %d may: each is a backend call of its own at every fetch",
				name, special, FieldOptional, FieldKeyPath, maxSpecialObjects)
		}
		if special == 0 {
			return nil
		}
		if !p.copied {
			p.params, p.copied = maps.Clone(p.params), true
		}
		p.objectsParam, p.objects, p.arrayForm = name, objs, array
		p.params[name] = encodeObjects(objs, array, func(o *object) bool { return true })
		return nil
	}
	return nil
}

// mayHaveFields reports whether an objects parameter in params mentions
// optional or keyPath at all (a cheap test before parsing YAML).
func mayHaveFields(params map[string]string) bool {
	for _, name := range objectParams {
		if src, ok := params[name]; ok {
			return strings.Contains(src, FieldOptional) || strings.Contains(src, FieldKeyPath)
		}
	}
	return false
}

// chargeParse charges w, before a parse of YAML that can make nodes nodes,
// a step and provider.YAMLNodeBytes a node, and text bytes more for what
// the parse and its caller copy; a nil w (tests) charges nothing.
func chargeParse(w *budget.Work, nodes, text int) error {
	if w == nil {
		return nil
	}
	if err := w.Step(int64(nodes)); err != nil {
		return err
	}
	return w.Charge(int64(nodes)*provider.YAMLNodeBytes + int64(text))
}

// objectItems returns the object maps of either spelling (see
// provider.DecodeObjects) and whether it was the `array:` one.
func objectItems(name string, root *yaml.Node, w *budget.Work) (items []*yaml.Node, array, ok bool, err error) {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	switch doc.Kind {
	case yaml.SequenceNode:
		return doc.Content, false, true, nil
	case yaml.MappingNode:
		if len(doc.Content) != 2 || doc.Content[0].Value != "array" || doc.Content[1].Kind != yaml.SequenceNode {
			return nil, false, false, nil
		}
		n, err := provider.ArrayItemsNodes(name, doc.Content[1].Content)
		if err != nil {
			return nil, false, false, err
		}
		if err := chargeParse(w, n, 0); err != nil {
			return nil, false, false, err
		}
		for _, s := range doc.Content[1].Content {
			if s.Kind != yaml.ScalarNode {
				return nil, false, false, nil
			}
			obj, err := provider.ParseParam(name, s.Value)
			if err != nil || len(obj.Content) != 1 || obj.Content[0].Kind != yaml.MappingNode {
				return nil, false, false, nil
			}
			items = append(items, obj.Content[0])
		}
		return items, true, true, nil
	}
	return nil, false, false, nil
}

// takeFields removes optional and keyPath from one object map.
func takeFields(param string, i int, item *yaml.Node) (object, error) {
	o := object{name: objectName(param, i, item), node: item}
	if item.Kind != yaml.MappingNode {
		return o, nil
	}
	kept := make([]*yaml.Node, 0, len(item.Content))
	for j := 0; j+1 < len(item.Content); j += 2 {
		k, v := item.Content[j], item.Content[j+1]
		switch k.Value {
		case FieldOptional:
			b, err := strconv.ParseBool(v.Value)
			if err != nil || v.Kind != yaml.ScalarNode {
				return o, provider.InvalidArgument("parameter %s: %s: optional must be true or false", param, o.name)
			}
			o.optional = b
		case FieldKeyPath:
			kp, err := ParseKeyPath(v.Value)
			if err != nil || v.Kind != yaml.ScalarNode {
				if err == nil {
					err = fmt.Errorf("must be text")
				}
				return o, provider.InvalidArgument("parameter %s: %s: keyPath: %v", param, o.name, err)
			}
			o.keyPath = &kp
		default:
			kept = append(kept, k, v)
		}
	}
	o.node = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: kept}
	if o.special() {
		for j := 0; j+1 < len(kept); j += 2 {
			if selectorFields[kept[j].Value] {
				return o, provider.InvalidArgument("parameter %s: %s: optional and keyPath cannot be used with the selector %s: "+
					"a selection that selects nothing is already no error, and it may be many files", param, o.name, kept[j].Value)
			}
		}
	}
	return o, nil
}

// selectorFields are the object fields with which the built-in backends
// select objects instead of naming one (README "Mount by selector").
var selectorFields = map[string]bool{"labelSelector": true, "objectNamePrefix": true, "objectNameRegex": true, "objectTags": true}

// objectName names an object for messages by the fields providers use.
func objectName(param string, i int, item *yaml.Node) string {
	for _, f := range []string{"objectAlias", "objectName", "secretName", "fileName", "path", "resourceName"} {
		for j := 0; j+1 < len(item.Content); j += 2 {
			if item.Content[j].Value == f && item.Content[j+1].Kind == yaml.ScalarNode && item.Content[j+1].Value != "" {
				return fmt.Sprintf("%s[%d] (%s %q)", param, i, f, clip(item.Content[j+1].Value))
			}
		}
	}
	return fmt.Sprintf("%s[%d]", param, i)
}

// encodeObjects writes the objects for which keep is true in the
// parameter's original spelling.
func encodeObjects(objs []object, array bool, keep func(*object) bool) string {
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for i := range objs {
		if !keep(&objs[i]) {
			continue
		}
		if array {
			b, _ := yaml.Marshal(objs[i].node)
			seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Style: yaml.LiteralStyle, Value: string(b)})
		} else {
			seq.Content = append(seq.Content, objs[i].node)
		}
	}
	var root *yaml.Node = seq
	if array {
		root = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: "array"}, seq}}
	}
	b, _ := yaml.Marshal(root)
	return string(b)
}

// Parameters are what the provider gets: the class's parameters without
// this package's, objects without optional and keyPath; for a nil Plan,
// params (the class's, as given to Parse). Do not modify.
func (p *Plan) Parameters(params map[string]string) map[string]string {
	if p == nil {
		return params
	}
	return p.params
}

// Shapes reports whether Render changes anything (templates or hidden objects).
func (p *Plan) Shapes() bool { return p != nil && len(p.templates) > 0 }

// NeedsFiles reports whether the plan works on the files a provider
// returns (templates, key paths, optional objects), which a provider that
// writes the files into the volume itself does not return.
func (p *Plan) NeedsFiles() bool { return p != nil && (len(p.templates) > 0 || p.objects != nil) }

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
