package mask

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// reference masks a whole stream at once, written independently of Writer:
// at each position the longest value that starts there is replaced.
func reference(in string, values []string) string {
	var b strings.Builder
	for i := 0; i < len(in); {
		best := ""
		for _, v := range values {
			if v != "" && len(v) > len(best) && strings.HasPrefix(in[i:], v) {
				best = v
			}
		}
		if best == "" {
			b.WriteByte(in[i])
			i++
			continue
		}
		b.WriteString(Replacement)
		i += len(best)
	}
	return b.String()
}

// stream writes in to a Writer in pieces of the given sizes (cycled) and
// checks the bound on what it holds back after every Write.
func stream(t testing.TB, in string, values []string, sizes []int) string {
	var raw [][]byte
	for _, v := range values {
		raw = append(raw, []byte(v))
	}
	set := NewSet(raw)
	var out bytes.Buffer
	w := NewWriter(&out, NewSource(set))
	for k := 0; len(in) > 0; k++ {
		n := 1
		if len(sizes) > 0 {
			n = max(1, sizes[k%len(sizes)])
		}
		n = min(n, len(in))
		if got, err := w.Write([]byte(in[:n])); got != n || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", got, err, n)
		}
		if w.Held() >= max(set.Longest(), 1) {
			t.Fatalf("holds %d bytes; the longest value has %d", w.Held(), set.Longest())
		}
		in = in[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func TestWriter(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		values   []string
		want     string
	}{
		{"none", "hello world", nil, "hello world"},
		{"one", "user=admin pass=hunter2\n", []string{"hunter2"}, "user=admin pass=***\n"},
		{"every occurrence", "s3cr3ts3cr3t s3cr3t", []string{"s3cr3t"}, "****** ***"},
		{"longest wins", "abcdef", []string{"abc", "abcdef"}, "***"},
		{"leftmost wins", "xabcd", []string{"bcd", "xab"}, "***cd"},
		{"prefix at the end is passed on at Close", "tail hunt", []string{"hunter2"}, "tail hunt"},
		{"empty value ignored", "abc", []string{""}, "abc"},
		{"not rescanned", "a***b", []string{"*"}, "a*********b"},
		{"binary", "\x00\xff\x00secret\x00", []string{"\xff\x00s"}, "\x00***ecret\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := reference(tc.in, tc.values); got != tc.want {
				t.Fatalf("reference = %q, want %q", got, tc.want)
			}
			for _, sizes := range [][]int{{1 << 20}, {1}, {2, 3}, {5}} {
				if got := stream(t, tc.in, tc.values, sizes); got != tc.want {
					t.Errorf("pieces %v: got %q, want %q", sizes, got, tc.want)
				}
			}
		})
	}
}

// TestWriterPassesOnWhatCannotMatch: output that cannot become a value is
// written in the same Write, so an interactive command's output is not
// held up; only a possible prefix of a value waits.
func TestWriterPassesOnWhatCannotMatch(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out, NewSource(NewSet([][]byte{[]byte("password123")})))
	if _, err := w.Write([]byte("prompt> ")); err != nil {
		t.Fatal(err)
	}
	if out.String() != "prompt> " || w.Held() != 0 {
		t.Fatalf("after a Write with no prefix of a value: wrote %q, holds %d", out.String(), w.Held())
	}
	if _, err := w.Write([]byte("the pass")); err != nil {
		t.Fatal(err)
	}
	if out.String() != "prompt> the " || w.Held() != 4 {
		t.Fatalf("after a Write ending in a prefix: wrote %q, holds %d", out.String(), w.Held())
	}
	if _, err := w.Write([]byte("word123!")); err != nil {
		t.Fatal(err)
	}
	if out.String() != "prompt> the ***!" {
		t.Fatalf("wrote %q", out.String())
	}
}

// TestWriterLargeWrite: one Write far larger than the scan chunk, with a
// value across each chunk boundary.
func TestWriterLargeWrite(t *testing.T) {
	value := "0123456789abcdef"
	var in strings.Builder
	for in.Len() < 5*chunk {
		in.WriteString(strings.Repeat("x", chunk-7))
		in.WriteString(value)
	}
	want := reference(in.String(), []string{value})
	if strings.Contains(want, value) || !strings.Contains(want, Replacement) {
		t.Fatal("reference did not mask")
	}
	if got := stream(t, in.String(), []string{value}, []int{len(in.String())}); got != want {
		t.Errorf("one large Write: output differs from the reference (%d vs %d bytes)", len(got), len(want))
	}
}

func TestSourceSwap(t *testing.T) {
	var out bytes.Buffer
	src := NewSource(NewSet([][]byte{[]byte("old-secret")}))
	w := NewWriter(&out, src)
	if _, err := w.Write([]byte("old-secret new-secret\n")); err != nil {
		t.Fatal(err)
	}
	src.Store(NewSet([][]byte{[]byte("old-secret"), []byte("new-secret")}))
	if _, err := w.Write([]byte("old-secret new-secret\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if want := "*** new-secret\n*** ***\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}

func TestForms(t *testing.T) {
	got := map[string]bool{}
	for _, f := range Forms([][]byte{[]byte("pa?s>\n")}, true) {
		got[string(f)] = true
	}
	for _, want := range []string{"pa?s>\n", "pa?s>", "cGE/cz4K", "cGE_cz4K", "cGE/cz4=", "cGE_cz4=", "cGE/cz4", "cGE_cz4"} {
		if !got[want] {
			t.Errorf("Forms lacks %q (has %v)", want, got)
		}
	}
	if n := len(Forms([][]byte{[]byte("x")}, false)); n != 1 {
		t.Errorf("Forms without base64 of a value with no line break: %d forms, want 1", n)
	}
}

type failing struct{}

func (failing) Write([]byte) (int, error) { return 0, errors.New("closed") }

func TestWriterError(t *testing.T) {
	w := NewWriter(failing{}, NewSource(NewSet([][]byte{[]byte("k")})))
	if _, err := w.Write([]byte("abc")); err == nil {
		t.Fatal("Write to a failing writer succeeded")
	}
	if _, err := w.Write([]byte("abc")); err == nil {
		t.Fatal("the error is not sticky")
	}
}

// FuzzWriter: for any values, input and split into Writes, the stream's
// output is the reference's for the whole input, and the Writer never
// holds back as much as the longest value.
func FuzzWriter(f *testing.F) {
	f.Add("hunter2", "ab", "pass=hunter2 hunter hunter2", []byte{1, 3, 2})
	f.Add("aaa", "aa", "aaaaaaa", []byte{1})
	f.Add("abcabd", "bca", "abcabcabdabd", []byte{4, 1})
	f.Fuzz(func(t *testing.T, v1, v2, in string, sizes []byte) {
		values := []string{v1, v2}
		var sz []int
		for _, s := range sizes {
			sz = append(sz, int(s))
		}
		if got, want := stream(t, in, values, sz), reference(in, values); got != want {
			t.Fatalf("values %q, pieces %v: stream %q, reference %q", values, sz, got, want)
		}
	})
}
