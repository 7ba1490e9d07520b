package mask

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// BenchmarkWriter: 1 MiB of log-like text through a Writer in 32 KiB
// Writes (what a pipe copy hands it), with 10 or 100 values of 32 bytes,
// a few of which occur in the text.
func BenchmarkWriter(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("values=%d", n), func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 2))
			const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
			rnd := func(k int) []byte {
				v := make([]byte, k)
				for i := range v {
					v[i] = letters[r.IntN(len(letters))]
				}
				return v
			}
			var values [][]byte
			for range n {
				values = append(values, rnd(32))
			}
			var in bytes.Buffer
			for in.Len() < 1<<20 {
				fmt.Fprintf(&in, "2026-01-02T03:04:05Z level=info msg=%q user=%s\n", rnd(40), rnd(8))
				if r.IntN(20) == 0 {
					fmt.Fprintf(&in, "token=%s\n", values[r.IntN(n)])
				}
			}
			data := in.Bytes()
			w := NewWriter(io.Discard, NewSource(NewSet(values)))
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				for p := data; len(p) > 0; {
					k := min(len(p), 32<<10)
					if _, err := w.Write(p[:k]); err != nil {
						b.Fatal(err)
					}
					p = p[k:]
				}
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
