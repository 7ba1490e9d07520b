package mask

import (
	"bytes"
	"io"
)

// chunk bounds the bytes a Writer scans at once: the pending tail plus at
// most chunk bytes of a Write, whatever that Write's size.
const chunk = 32 << 10

// Writer masks the values of a Source in what is written to it and passes
// the result to the writer underneath. Close passes on what it held back.
// A Writer is not safe for concurrent Writes (one stream, one Writer).
type Writer struct {
	dst  io.Writer
	src  *Source
	tail []byte // held back: a proper prefix of some value, < Longest bytes
	scan []byte // tail + the chunk being scanned
	out  []byte
	err  error
}

// NewWriter returns a Writer that writes to dst.
func NewWriter(dst io.Writer, src *Source) *Writer {
	return &Writer{dst: dst, src: src}
}

// Write masks p and writes what cannot still be part of a value. It
// returns len(p) unless the writer underneath failed.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), chunk)]
		p = p[len(c):]
		w.scan = append(append(w.scan[:0], w.tail...), c...)
		held := w.process(w.scan, false)
		if err := w.flushOut(); err != nil {
			return n, err
		}
		w.tail = append(w.tail[:0], held...)
		n += len(c)
	}
	return n, nil
}

// Close writes what was held back (it can no longer become a value) and
// closes nothing else.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	w.process(w.tail, true)
	w.tail = w.tail[:0]
	return w.flushOut()
}

// Held is the number of bytes held back.
func (w *Writer) Held() int { return len(w.tail) }

func (w *Writer) flushOut() error {
	if len(w.out) == 0 {
		return nil
	}
	_, err := w.dst.Write(w.out)
	w.out = w.out[:0]
	if err != nil {
		w.err = err
	}
	return err
}

// process appends the masked form of data to w.out and returns the suffix
// of data it holds back: the part from the first position at which a value
// may start but does not fit in data yet. At the end of the stream (final)
// nothing is held back.
func (w *Writer) process(data []byte, final bool) []byte {
	set := w.src.Load()
	i, from := 0, 0 // from: start of the bytes not yet copied to w.out
	for i < len(data) {
		if !set.mayStart(data, i) {
			i++
			continue
		}
		matched, hold := 0, false
		rest := data[i:]
		for _, v := range set.byFirst[data[i]] { // longest first
			if len(v) > len(rest) {
				if !final && bytes.HasPrefix(v, rest) {
					hold = true // a longer value may still match here
					break
				}
				continue
			}
			if bytes.Equal(rest[:len(v)], v) {
				matched = len(v)
				break
			}
		}
		switch {
		case hold:
			w.out = append(w.out, data[from:i]...)
			return data[i:]
		case matched > 0:
			w.out = append(append(w.out, data[from:i]...), Replacement...)
			i += matched
			from = i
		default:
			i++
		}
	}
	w.out = append(w.out, data[from:]...)
	return nil
}
