package content

import "sync"

// Parsed templates are kept by their source text, so that a class's
// templates are parsed once, not on every publish: class sources hand out a
// fresh Class per lookup. Parsed templates are never modified (each render
// works on a clone), so one parse serves every volume.
var memo = templateMemo{entries: map[string][]*Template{}}

// maxMemoSource bounds the source bytes remembered; past it the memo
// starts over.
const maxMemoSource = 4 << 20

type templateMemo struct {
	mu      sync.Mutex
	entries map[string][]*Template
	size    int
}

func (m *templateMemo) get(src string) ([]*Template, error) {
	m.mu.Lock()
	ts, ok := m.entries[src]
	m.mu.Unlock()
	if ok {
		return ts, nil
	}
	ts, err := parseTemplates(src)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.size+len(src) > maxMemoSource {
		m.entries, m.size = map[string][]*Template{}, 0
	}
	if _, ok := m.entries[src]; !ok {
		m.entries[src] = ts
		m.size += len(src)
	}
	return ts, nil
}
