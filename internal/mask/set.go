// Package mask replaces secret values in a stream of output with "***", as
// `op run` does for the output of the command it runs.
//
// The contract:
//
//  1. Every occurrence of a value is replaced, whatever the write boundaries:
//     a value split across two or more Write calls is found as if the
//     stream had come in one piece.
//  2. Matches are leftmost, then longest: at each position the longest value
//     that starts there wins, and the search goes on after it. The output
//     is not searched again ("***" never combines with its neighbours into
//     a new match).
//  3. Memory is bounded by the longest value, not by the stream: a Writer
//     holds back at most len(longest value)-1 bytes, and only bytes that may
//     still become a value (a suffix of what was written that is a proper
//     prefix of some value). Output that cannot be part of a value is
//     passed on in the same Write call.
//  4. Values never appear in errors or logs of this package.
package mask

import (
	"bytes"
	"encoding/base64"
	"slices"
	"sync/atomic"
)

// Replacement is what a value is replaced with.
const Replacement = "***"

// Set is an immutable set of values to mask.
type Set struct {
	// byFirst lists, per first byte, the values that start with it,
	// longest first.
	byFirst [256][][]byte
	first   [256]bool
	// single marks first bytes of one-byte values; pairs is a bitset of
	// the first two bytes of longer values: most positions are ruled out
	// with two lookups.
	single  [256]bool
	pairs   [1 << 16 / 64]uint64
	longest int
	count   int
}

// NewSet returns the set of the non-empty values (duplicates are kept
// once). The values are copied.
func NewSet(values [][]byte) *Set {
	s := &Set{}
	seen := make(map[string]bool, len(values))
	for _, v := range values {
		if len(v) == 0 || seen[string(v)] {
			continue
		}
		seen[string(v)] = true
		c := bytes.Clone(v)
		s.byFirst[c[0]] = append(s.byFirst[c[0]], c)
		s.first[c[0]] = true
		if len(c) == 1 {
			s.single[c[0]] = true
		} else {
			k := uint16(c[0])<<8 | uint16(c[1])
			s.pairs[k/64] |= 1 << (k % 64)
		}
		s.longest = max(s.longest, len(c))
		s.count++
	}
	for i := range s.byFirst {
		slices.SortStableFunc(s.byFirst[i], func(a, b []byte) int { return len(b) - len(a) })
	}
	return s
}

// mayStart reports whether a value may start at data[i] (a cheap filter:
// the caller compares the values).
func (s *Set) mayStart(data []byte, i int) bool {
	c := data[i]
	if !s.first[c] {
		return false
	}
	if s.single[c] || i+1 == len(data) {
		return true
	}
	k := uint16(c)<<8 | uint16(data[i+1])
	return s.pairs[k/64]&(1<<(k%64)) != 0
}

// Len is the number of distinct values.
func (s *Set) Len() int { return s.count }

// Longest is the length of the longest value: a Writer holds back less.
func (s *Set) Longest() int { return s.longest }

// Forms returns, for each value, the forms in which a command may print
// it: the value itself and the value without its trailing line break (a
// file's content usually ends with one; what is printed from it often does
// not) and, with b64, the standard and URL-safe base64 encodings of both,
// padded and unpadded.
func Forms(values [][]byte, b64 bool) [][]byte {
	var out [][]byte
	for _, v := range values {
		forms := [][]byte{v}
		if t := bytes.TrimRight(v, "\r\n"); len(t) != len(v) {
			forms = append(forms, t)
		}
		out = append(out, forms...)
		if !b64 {
			continue
		}
		for _, f := range forms {
			if len(f) == 0 {
				continue
			}
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
				out = append(out, []byte(enc.EncodeToString(f)))
			}
		}
	}
	return out
}

// Source holds the current Set of one or more Writers; Store swaps it while
// they write (values that rotate in are masked from the next Write on).
type Source struct{ p atomic.Pointer[Set] }

// NewSource returns a Source holding s.
func NewSource(s *Set) *Source {
	src := &Source{}
	src.Store(s)
	return src
}

// Store makes s the set of the next Writes.
func (src *Source) Store(s *Set) {
	if s == nil {
		s = NewSet(nil)
	}
	src.p.Store(s)
}

// Load returns the current set.
func (src *Source) Load() *Set { return src.p.Load() }
