package class

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"
)

// NewDir returns a Source that reads SecretProviderClass
// YAML files (*.yaml, *.yml, *.json; several documents per file allowed) from
// dir. A class without metadata.namespace is in "default". Files are re-read
// when their size or mtime changes; the directory is looked at again at most
// once per RecheckInterval, so edits apply within that time, and a burst of
// lookups (every pod of a Deployment starting) costs no system call at all.
func NewDir(dir string) Source {
	return &dirSource{dir: dir, files: map[string]*dirFile{}, recheck: RecheckInterval, now: time.Now}
}

// NewFile returns a Source that reads the classes of one
// file, re-read when it changes (the local agent's --class).
func NewFile(path string) Source {
	return &dirSource{dir: filepath.Dir(path), only: filepath.Base(path), files: map[string]*dirFile{}, recheck: RecheckInterval, now: time.Now}
}

// RecheckInterval is how long a directory class source trusts what it last
// saw before it lists and stats the directory again.
const RecheckInterval = time.Second

type dirSource struct {
	dir     string
	only    string // when set, the one file of dir that is read
	recheck time.Duration
	now     func() time.Time

	mu      sync.Mutex
	files   map[string]*dirFile
	names   []string  // file names in order, as of checked
	checked time.Time // last look at the directory (zero: never, or it failed)
}

type dirFile struct {
	mtime   time.Time
	size    int64
	classes []*Class
	err     error
}

func (s *dirSource) Get(ctx context.Context, namespace, name string) (*Class, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := s.names
	if now := s.now(); s.checked.IsZero() || now.Sub(s.checked) >= s.recheck || now.Before(s.checked) {
		var err error
		if names, err = s.refresh(); err != nil {
			s.checked, s.names = time.Time{}, nil
			return nil, notFound(namespace, name, err.Error())
		}
		s.checked, s.names = now, names
	}
	var broken []string
	for _, fn := range names {
		f := s.files[fn]
		if f.err != nil {
			broken = append(broken, fmt.Sprintf("%s: %v", fn, f.err))
			continue
		}
		for _, c := range f.classes {
			if c.Namespace == namespace && c.Name == name {
				if err := c.check(); err != nil {
					return nil, err
				}
				return c, nil
			}
		}
	}
	hint := ""
	if len(broken) > 0 {
		hint = "unreadable class files: " + strings.Join(broken, "; ")
	}
	return nil, notFound(namespace, name, hint)
}

// refresh re-reads changed files and returns the file names in order.
func (s *dirSource) refresh() ([]string, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("reading class directory: %v", err)
	}
	seen := map[string]bool{}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if s.only != "" && n != s.only {
			continue
		}
		ext := strings.ToLower(filepath.Ext(n))
		if s.only == "" && (e.IsDir() || strings.HasPrefix(n, ".") || (ext != ".yaml" && ext != ".yml" && ext != ".json")) {
			continue
		}
		fi, err := os.Stat(filepath.Join(s.dir, n))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		seen[n] = true
		names = append(names, n)
		if f, ok := s.files[n]; ok && f.mtime.Equal(fi.ModTime()) && f.size == fi.Size() {
			continue
		}
		f := &dirFile{mtime: fi.ModTime(), size: fi.Size()}
		f.classes, f.err = parseFile(filepath.Join(s.dir, n))
		s.files[n] = f
	}
	for n := range s.files {
		if !seen[n] {
			delete(s.files, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// parseFile returns the SecretProviderClasses of one file; documents of other
// kinds are skipped.
func parseFile(path string) ([]*Class, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseDocuments(data)
}

func parseDocuments(data []byte) ([]*Class, error) {
	var out []*Class
	for i, doc := range splitDocuments(data) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			return nil, fmt.Errorf("document %d: %s", i+1, oneLine(err))
		}
		if !o.isClass() {
			continue
		}
		if o.Metadata.Name == "" {
			return nil, fmt.Errorf("document %d: SecretProviderClass without metadata.name", i+1)
		}
		c := o.class()
		var raw struct {
			Spec map[string]any `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &raw); err == nil {
			c.Unknown = unknownFields(raw.Spec)
		}
		out = append(out, c)
	}
	return out, nil
}

func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) {
			docs = append(docs, cur)
			cur = nil
			continue
		}
		cur = append(cur, line...)
	}
	return append(docs, cur)
}

func oneLine(err error) string {
	s := strings.ReplaceAll(err.Error(), "\n", " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// ReadFile returns the SecretProviderClasses of one YAML file, checked.
func ReadFile(path string) ([]*Class, error) {
	classes, err := parseFile(path)
	if err != nil {
		return nil, err
	}
	for _, c := range classes {
		if err := c.check(); err != nil {
			return nil, err
		}
	}
	return classes, nil
}
