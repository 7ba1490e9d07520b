package content

import (
	"sync"

	"github.com/secretfs/secretfs/driver/budget"
)

// Parsed templates are kept by their source text, so that a class's
// templates are parsed once, not on every publish: class sources hand out a
// fresh Class per lookup. Parsed templates are never modified (each render
// works on a clone), so one parse serves every volume.
//
// A parse tree holds about 100 bytes per byte of source (measured: 60 KiB
// of `{{1}}` is 5.4 MiB live), so both what the memo keeps and what parses
// at once are bounded in tree bytes, not source: parses run one at a time
// (at most one class's 64 KiB of source, about 7 MiB, in the making), and
// the memo starts over past maxMemoTrees.
var memo = templateMemo{entries: map[string][]*Template{}}

const (
	// treeBytesPerSource bounds the parse tree's bytes per byte of source.
	treeBytesPerSource = 128
	// maxMemoTrees bounds the parse trees the memo keeps.
	maxMemoTrees = 8 << 20
)

type templateMemo struct {
	parse   sync.Mutex // one parse at a time
	mu      sync.Mutex
	entries map[string][]*Template
	size    int
}

func (m *templateMemo) lookup(src string) ([]*Template, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ts, ok := m.entries[src]
	return ts, ok
}

// get returns the parsed templates of src, parsing them in w's turn among
// the node's computations if no volume did before.
func (m *templateMemo) get(src string, w *budget.Work) ([]*Template, error) {
	if ts, ok := m.lookup(src); ok {
		return ts, nil
	}
	end, err := w.Turn()
	if err != nil {
		return nil, err
	}
	defer end()
	m.parse.Lock()
	defer m.parse.Unlock()
	if ts, ok := m.lookup(src); ok { // parsed while this one waited
		return ts, nil
	}
	ts, err := parseTemplates(src)
	if err != nil {
		return nil, err
	}
	cost := treeBytesPerSource * len(src)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.size+cost > maxMemoTrees {
		m.entries, m.size = map[string][]*Template{}, 0
	}
	if cost <= maxMemoTrees {
		m.entries[src] = ts
		m.size += cost
	}
	return ts, nil
}
