package content

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds of a key path, checked while parsing.
const (
	maxPathLen   = 1024
	maxPathSteps = 64
	maxDepth     = 1000 // nesting of a value converted to JSON
)

// KeyPath selects one value inside a JSON or YAML document. Its syntax:
//
//	path   = first { "." name | "[" index "]" | "[" quoted "]" }
//	first  = [ "." ] ( name | "[" index "]" | "[" quoted "]" )
//	name   = one or more characters other than . [ ] " and white space
//	index  = a list index: 0, 1, 2, ...
//	quoted = a JSON string: ["key.with.dots"], ["with \"quotes\""]
//
// Examples: password, database.password, .database.password,
// servers[0].host, ["tls.crt"], users[2]["first name"].
type KeyPath struct {
	text  string
	steps []step
}

// step is a map key (key != nil) or a list index.
type step struct {
	key   *string
	index int
}

// String returns the path as written.
func (p KeyPath) String() string { return p.text }

// ParseKeyPath parses a key path; errors name the column at fault.
func ParseKeyPath(s string) (KeyPath, error) {
	p := KeyPath{text: s}
	if s == "" {
		return p, fmt.Errorf("key path is empty")
	}
	if len(s) > maxPathLen {
		return p, fmt.Errorf("key path is %d bytes long; at most %d", len(s), maxPathLen)
	}
	if !utf8.ValidString(s) {
		return p, fmt.Errorf("key path is not valid UTF-8")
	}
	i := 0
	if s[0] == '.' {
		i = 1
	}
	for first := true; i < len(s); first = false {
		if len(p.steps) == maxPathSteps {
			return p, fmt.Errorf("key path has more than %d steps", maxPathSteps)
		}
		switch {
		case s[i] == '[':
			st, n, err := bracket(s[i:])
			if err != nil {
				return p, fmt.Errorf("key path column %d: %v", i+1, err)
			}
			p.steps = append(p.steps, st)
			i += n
		case first || s[i] == '.':
			if !first {
				i++
			}
			n := nameLen(s[i:])
			if n == 0 {
				return p, fmt.Errorf("key path column %d: expected a key name (use [\"...\"] for keys with dots, brackets, quotes or spaces)", i+1)
			}
			name := s[i : i+n]
			p.steps = append(p.steps, step{key: &name})
			i += n
		default:
			return p, fmt.Errorf("key path column %d: expected . or [ after a step", i+1)
		}
	}
	if len(p.steps) == 0 {
		return p, fmt.Errorf("key path %q selects nothing: name a key", s)
	}
	return p, nil
}

func nameLen(s string) int {
	for i, r := range s {
		if r == '.' || r == '[' || r == ']' || r == '"' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return i
		}
	}
	return len(s)
}

// bracket parses "[0]" or "[\"key\"]" at the start of s.
func bracket(s string) (step, int, error) {
	if len(s) > 1 && s[1] == '"' {
		// Find the closing quote, honouring backslash escapes.
		j := 2
		for ; j < len(s); j++ {
			if s[j] == '\\' {
				j++
				continue
			}
			if s[j] == '"' {
				break
			}
		}
		if j >= len(s) || j+1 >= len(s) || s[j+1] != ']' {
			return step{}, 0, fmt.Errorf(`a quoted key must look like ["key"]`)
		}
		var key string
		if err := json.Unmarshal([]byte(s[1:j+1]), &key); err != nil {
			return step{}, 0, fmt.Errorf("the quoted key is not a valid JSON string")
		}
		return step{key: &key}, j + 2, nil
	}
	end := strings.IndexByte(s, ']')
	if end < 0 {
		return step{}, 0, fmt.Errorf("[ without ]")
	}
	digits := s[1:end]
	if digits == "" || (len(digits) > 1 && digits[0] == '0') || strings.Trim(digits, "0123456789") != "" {
		return step{}, 0, fmt.Errorf(`an index is a number (0, 1, ...); quote keys as ["key"]`)
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n > 1<<20 {
		return step{}, 0, fmt.Errorf("index too large")
	}
	return step{index: n}, end + 1, nil
}

// describe names the prefix of the path up to step i, for messages.
func (p KeyPath) describe(i int) string {
	var b strings.Builder
	for _, st := range p.steps[:i+1] {
		if st.key != nil {
			if nameLen(*st.key) == len(*st.key) && *st.key != "" {
				if b.Len() > 0 {
					b.WriteByte('.')
				}
				b.WriteString(*st.key)
			} else {
				q, _ := json.Marshal(*st.key)
				fmt.Fprintf(&b, "[%s]", q)
			}
		} else {
			fmt.Fprintf(&b, "[%d]", st.index)
		}
	}
	return b.String()
}
