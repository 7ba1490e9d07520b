package provider

import (
	"runtime"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
)

func countNodes(n *yaml.Node) int {
	c := 1
	for _, k := range n.Content {
		c += countNodes(k)
	}
	return c
}

// YAMLNodes is an upper bound on the nodes the parser builds, and
// YAMLNodeBytes on what it allocates for each, for the densest documents.
func TestYAMLNodesBoundsTheParse(t *testing.T) {
	for name, doc := range map[string]string{
		"flow list":     "[" + strings.Repeat("a,", 50000) + "a]",
		"flow pairs":    "[" + strings.Repeat(":,", 50000) + ":]",
		"flow map":      "{" + strings.Repeat("a,", 50000) + "a}",
		"block list":    strings.Repeat("- a\n", 50000),
		"nested lists":  strings.Repeat("- ", 500) + "a\n",
		"map":           strings.Repeat("k: v\n", 50000),
		"aliases":       "a: &a x\nb: [" + strings.Repeat("*a,", 50000) + "*a]\n",
		"empty values":  strings.Repeat("? \n", 50000),
		"tagged values": "[" + strings.Repeat("!a ,", 50000) + "!a ]",
	} {
		var root yaml.Node
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		err := yaml.Unmarshal([]byte(doc), &root)
		runtime.ReadMemStats(&b)
		if err != nil {
			continue
		}
		nodes, bound := countNodes(&root), YAMLNodes(doc)
		if nodes > bound {
			t.Errorf("%s: %d nodes, bound %d", name, nodes, bound)
		}
		if alloc := b.TotalAlloc - a.TotalAlloc; alloc > uint64(bound*YAMLNodeBytes+len(doc)) {
			t.Errorf("%s: allocated %d bytes, charged %d", name, alloc, bound*YAMLNodeBytes+len(doc))
		}
	}
}

func FuzzYAMLNodes(f *testing.F) {
	for _, s := range []string{"a", "[:]", "[:,:,:]", "{a, b}", "- - -", "? ", "a: &x [1, *x]", "--- a\n--- b", "!t", "key: |\n  text\n", `"a\"b": 'c'`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		var root yaml.Node
		if yaml.Unmarshal([]byte(doc), &root) != nil {
			return
		}
		if n := countNodes(&root); n > YAMLNodes(doc) {
			t.Fatalf("%q: %d nodes, bound %d", doc, n, YAMLNodes(doc))
		}
	})
}

// A class parameter of 1.4 MiB (within the API server's object limit) of
// dense YAML made the parser allocate about 180 MiB: an OOM kill of a driver
// limited to 128 MiB. It is refused before parsing.
func TestDenseParameterIsRefusedBeforeParsing(t *testing.T) {
	param := "[" + strings.Repeat("a,", 700<<10) + "a]"
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	var objs []struct {
		Name string `yaml:"objectName"`
	}
	err := DecodeObjects(param, &objs)
	runtime.ReadMemStats(&b)
	if CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "objects") {
		t.Errorf("dense objects parameter: %v, want ResourceExhausted naming it", err)
	}
	if alloc := b.TotalAlloc - a.TotalAlloc; alloc > 1<<20 {
		t.Errorf("allocated %d bytes before refusing", alloc)
	}
}
