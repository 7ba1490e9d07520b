package provider

import (
	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
)

// YAML costs memory out of all proportion to its size: yaml.v3 builds a
// node of about 160 bytes (plus the parser's events) for each value, and a
// value can be two bytes ("a,"), so a document of 1 MiB in a class
// parameter makes the parser allocate about 130 MiB, and a 1.5 MiB class
// (the API server's limit) OOM-kills a driver limited to 128 MiB. So every
// YAML document a tenant writes (class parameters) or stores (a value a
// key path reads) is measured before it is parsed: YAMLNodes bounds the
// nodes it can make from a scan that allocates nothing, and the caller
// charges that bound (or refuses a document over a fixed one).

// MaxParamNodes bounds the YAML nodes of a class's objects parameter, as
// YAMLNodes counts them: at most 10 MiB of parse tree. A class
// of a thousand objects (the fake backend's most) needs about 20,000.
const MaxParamNodes = 32 << 10

// YAMLNodeBytes is what yaml.v3 allocates per node it builds, parser events
// included, rounded up (measured by TestYAMLNodesBoundsTheParse).
const YAMLNodeBytes = 320

// YAMLNodes returns an upper bound on the number of nodes yaml.v3 builds
// for doc, found by counting tokens without parsing: every node starts at
// an indicator (- ? : , [ ] { }) or a run of other non-blank bytes, and one
// indicator can make at most a node and an empty value beside it. Comments,
// quoted text and block scalars are counted as if they were values, which
// only raises the bound. FuzzYAMLNodes checks the bound against the parser.
func YAMLNodes(doc string) int {
	tokens, inRun := 0, false
	for i := 0; i < len(doc); i++ {
		switch c := doc[i]; c {
		case ' ', '\t', '\n', '\r':
			inRun = false
		case '-', '?', ':', ',', '[', ']', '{', '}':
			tokens++
			inRun = false
		default:
			if !inRun {
				tokens++
				inRun = true
			}
		}
	}
	return 2*tokens + 2
}

// ParseParam parses the YAML of class parameter name after checking that
// it cannot make more than MaxParamNodes nodes (ResourceExhausted naming
// the parameter otherwise). Errors hold no part of the value.
func ParseParam(name, src string) (*yaml.Node, error) {
	if n := YAMLNodes(src); n > MaxParamNodes {
		return nil, Errorf(codes.ResourceExhausted, "parameter %s is too large to parse: up to %d YAML values, more than the %d a class parameter may hold (a fixed limit): split the class", name, n, MaxParamNodes)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		return nil, InvalidArgument("parameter %s is not valid YAML: %s", name, cleanYAMLError(err))
	}
	return &root, nil
}

// ArrayItemsNodes checks the YAML documents the `array:` form of a class
// parameter holds in its strings, before any is parsed: each is a parse of
// its own, and bounding each alone would let a class hide its size in them
// (32 strings of 8,000 values each under an outer document of 850: 414 MiB
// of parsing for one publish). Together they may make at most
// MaxParamNodes nodes, as the whole parameter may.
func ArrayItemsNodes(name string, items []*yaml.Node) (int, error) {
	n := 0
	for _, item := range items {
		n += YAMLNodes(item.Value)
		if n > MaxParamNodes {
			return n, Errorf(codes.ResourceExhausted, "parameter %s is too large to parse: its array items hold more than the %d YAML values a class parameter may hold (a fixed limit): split the class", name, MaxParamNodes)
		}
	}
	return n, nil
}
