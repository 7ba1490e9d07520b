package atomicwriter

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/secretfs/secretfs/test/ci"
)

func readAll(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasPrefix(rel, "..") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Stat(p) // follow the top-level links like an application
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if d.Type()&fs.ModeSymlink != 0 {
				return walkLinked(dir, p, got)
			}
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func walkLinked(dir, p string, got map[string]string) error {
	return filepath.WalkDir(p+"/", func(q string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(q)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, filepath.Clean(q))
		got[filepath.ToSlash(rel)] = string(b)
		return nil
	})
}

func TestWriteAndReplace(t *testing.T) {
	dir := t.TempDir()
	w := New(dir)
	changed, err := w.Write([]File{
		{Path: "a", Mode: 0o644, Data: []byte("A1")},
		{Path: "sub/b", Mode: 0o600, Data: []byte("B1")},
		{Path: "gone", Mode: 0o644, Data: []byte("G")},
	})
	if err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v", changed, err)
	}
	if got := readAll(t, dir); len(got) != 3 || got["a"] != "A1" || got["sub/b"] != "B1" || got["gone"] != "G" {
		t.Fatalf("content: %v", got)
	}
	fi, err := os.Stat(filepath.Join(dir, "sub/b"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode of sub/b: %v %v", fi.Mode(), err)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "a")); l != "..data/a" {
		t.Fatalf("a links to %q", l)
	}

	changed, err = w.Write([]File{
		{Path: "a", Mode: 0o644, Data: []byte("A1")},
		{Path: "sub/b", Mode: 0o600, Data: []byte("B1")},
		{Path: "gone", Mode: 0o644, Data: []byte("G")},
	})
	if err != nil || changed {
		t.Fatalf("identical write: changed=%v err=%v", changed, err)
	}

	changed, err = w.Write([]File{
		{Path: "a", Mode: 0o640, Data: []byte("A2")},
		{Path: "sub/b", Mode: 0o600, Data: []byte("B1")},
	})
	if err != nil || !changed {
		t.Fatalf("second write: changed=%v err=%v", changed, err)
	}
	if got := readAll(t, dir); len(got) != 2 || got["a"] != "A2" || got["sub/b"] != "B1" {
		t.Fatalf("content after replace: %v", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "gone")); !os.IsNotExist(err) {
		t.Fatalf("old link still there: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	gens := 0
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "..") {
			gens++
		}
	}
	// The current generation and the previous one, kept for readers that
	// resolved ..data to it just before the swap.
	if gens != 2 {
		t.Fatalf("want the current and the previous generation directory, have %d: %v", gens, entries)
	}
	// The next change removes the previous one before writing its own.
	if _, err := w.Write([]File{{Path: "a", Mode: 0o640, Data: []byte("A3")}}); err != nil {
		t.Fatal(err)
	}
	if n := generations(t, dir); n != 2 {
		t.Fatalf("after a third write: %d generation directories, want 2", n)
	}
}

func generations(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "..") {
			n++
		}
	}
	return n
}

// An application that opens <dir>/<name> resolves ..data to a generation
// and then looks the name up in it. A swap between the two steps must not
// make the open fail: the old generation stays until the next change (with
// kubelet's way of removing it at once, the open finds it gone: ENOENT, a
// file missing in the middle of a rotation). The two steps are made here
// one by one, around a Write.
func TestOpenAcrossASwapFindsTheFile(t *testing.T) {
	dir := t.TempDir()
	w := New(dir)
	if _, err := w.Write([]File{{Path: "a", Mode: 0o644, Data: []byte("one")}}); err != nil {
		t.Fatal(err)
	}
	resolved, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := w.Write([]File{{Path: "a", Mode: 0o644, Data: []byte("two")}}); err != nil || !changed {
		t.Fatalf("second write: changed=%v err=%v", changed, err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, resolved, "a")); err != nil || string(got) != "one" {
		t.Fatalf("a reader that resolved ..data before the swap: %q, %v; want the old content", got, err)
	}
	if got := readAll(t, dir); got["a"] != "two" {
		t.Fatalf("content after the swap: %v", got)
	}
	// The next change removes that generation (a reader must not take a
	// whole rotation interval between two steps of one open).
	if _, err := w.Write([]File{{Path: "a", Mode: 0o644, Data: []byte("three")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, resolved)); !os.IsNotExist(err) {
		t.Fatalf("generation %s still there two changes later: %v", resolved, err)
	}
}

func TestWriteGroupAndMode(t *testing.T) {
	dir := t.TempDir()
	w := &Writer{Dir: dir, GID: 4321}
	if _, err := w.Write([]File{{Path: "x/y", Mode: 0o440, Data: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"..data/x", "..data/x/y"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Gid != 4321 {
			t.Fatalf("%s: gid %d", p, st.Gid)
		}
	}
	fi, _ := os.Stat(filepath.Join(dir, "x/y"))
	if fi.Mode().Perm() != 0o440 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

func TestWriteRejectsWithoutTouching(t *testing.T) {
	dir := t.TempDir()
	w := New(dir)
	if _, err := w.Write([]File{{Path: "keep", Mode: 0o644, Data: []byte("k")}}); err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][]File{
		"dotdot":    {{Path: "../x", Mode: 0o644}},
		"absolute":  {{Path: "/etc/passwd", Mode: 0o644}},
		"sneaky":    {{Path: "a/../../b", Mode: 0o644}},
		"duplicate": {{Path: "a", Mode: 0o644}, {Path: "a", Mode: 0o644}},
		"prefix":    {{Path: "a", Mode: 0o644}, {Path: "a/b", Mode: 0o644}},
		"reserved":  {{Path: "..data", Mode: 0o644}},
		"setuid":    {{Path: "a", Mode: 0o4755}},
	} {
		if _, err := w.Write(files); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if got := readAll(t, dir); len(got) != 1 || got["keep"] != "k" {
		t.Fatalf("content changed: %v", got)
	}
}

func TestWriteReplacesForeignTopLevelLink(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir).Write([]File{{Path: "a/f", Mode: 0o644, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("wrote outside the directory: %v", entries)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "a")); l != "..data/a" {
		t.Fatalf("link not replaced: %q", l)
	}
}

func TestWriteNoSpace(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("atomicwriter-test", dir, "tmpfs", 0, "size=64k"); err != nil {
		ci.Missing(t, "mounting tmpfs needs root: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	_, err := New(dir).Write([]File{{Path: "big", Mode: 0o644, Data: make([]byte, 1<<20)}})
	if err == nil || !errorsIsENOSPC(err) {
		t.Fatalf("want ENOSPC, got %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
}

func errorsIsENOSPC(err error) bool {
	for err != nil {
		if err == syscall.ENOSPC {
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// A reader that resolves ..data once and reads all files through it must
// always see one generation, never a mix, while writers swap generations.
func TestConcurrentReaderSeesConsistentSet(t *testing.T) {
	dir := t.TempDir()
	w := New(dir)
	gen := func(i int) []File {
		v := []byte(fmt.Sprintf("gen-%d", i))
		return []File{{Path: "a", Mode: 0o644, Data: v}, {Path: "b", Mode: 0o644, Data: v}, {Path: "d/c", Mode: 0o644, Data: v}}
	}
	if _, err := w.Write(gen(0)); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var consistent, mixed atomic.Int64
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				d, err := os.Open(filepath.Join(dir, "..data"))
				if err != nil {
					continue
				}
				var vals [][]byte
				ok := true
				for _, name := range []string{"a", "b", "d/c"} {
					fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY, 0)
					if err != nil {
						ok = false // the generation was removed under us: retry, not a mix
						break
					}
					f := os.NewFile(uintptr(fd), name)
					b := make([]byte, 64)
					n, _ := f.Read(b)
					f.Close()
					vals = append(vals, b[:n])
				}
				d.Close()
				if !ok {
					continue
				}
				if bytes.Equal(vals[0], vals[1]) && bytes.Equal(vals[1], vals[2]) {
					consistent.Add(1)
				} else {
					mixed.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= 300; i++ {
		if _, err := w.Write(gen(i)); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if mixed.Load() != 0 {
		t.Fatalf("reader saw %d mixed sets", mixed.Load())
	}
	if consistent.Load() == 0 {
		t.Fatal("reader never completed a read")
	}
	if got := readAll(t, dir); got["a"] != "gen-300" || got["d/c"] != "gen-300" {
		t.Fatalf("final content %v", got)
	}
}

// A failure after the new generation is written (step 4: a regular file
// where a top-level link belongs) removes that generation and leaves the
// previous view as it was.
func TestWriteFailureAfterGenerationCleansUp(t *testing.T) {
	dir := t.TempDir()
	w := New(dir)
	if _, err := w.Write([]File{{Path: "keep", Mode: 0o644, Data: []byte("k")}}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(dir)
	if err := os.WriteFile(filepath.Join(dir, "squat"), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := w.Write([]File{{Path: "keep", Mode: 0o644, Data: []byte("k2")}, {Path: "squat", Mode: 0o644, Data: []byte("x")}})
	if err == nil || !strings.Contains(err.Error(), "non-symlink entry") {
		t.Fatalf("want a refusal of the non-symlink entry, got %v", err)
	}
	after, _ := os.ReadDir(dir)
	if len(after) != len(before)+1 {
		t.Fatalf("entries before %v, after %v: want only the squatter added", before, after)
	}
	if got := readAll(t, dir); got["keep"] != "k" {
		t.Fatalf("content changed: %v", got)
	}
}

// A ..data_tmp left by a crash between its symlink and the rename is in
// the way of the next swap: the writer removes it and swaps.
func TestWriteReplacesLeftoverDataTmp(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("..2000_01_01_00_00_00.1", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	changed, err := New(dir).Write([]File{{Path: "a", Mode: 0o644, Data: []byte("A")}})
	if err != nil || !changed {
		t.Fatalf("write: changed=%v err=%v", changed, err)
	}
	if got := readAll(t, dir); len(got) != 1 || got["a"] != "A" {
		t.Fatalf("content: %v", got)
	}
	if _, err := os.Lstat(filepath.Join(dir, "..data_tmp")); !os.IsNotExist(err) {
		t.Fatalf("..data_tmp still there: %v", err)
	}
}

// A write into an empty directory, then the same files (no change), then
// fewer: the current generation, the previous one and the current set's
// top-level links remain.
func TestWriteIntoEmptyThenReplace(t *testing.T) {
	dir := t.TempDir()
	w := New(dir)
	files := []File{{Path: "a", Mode: 0o644, Data: []byte("A1")}, {Path: "sub/b", Mode: 0o600, Data: []byte("B1")}}
	if changed, err := w.Write(files); err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v", changed, err)
	}
	if got := readAll(t, dir); len(got) != 2 || got["a"] != "A1" || got["sub/b"] != "B1" {
		t.Fatalf("content: %v", got)
	}
	if changed, err := w.Write(files); err != nil || changed {
		t.Fatalf("identical write after the first: changed=%v err=%v", changed, err)
	}
	if changed, err := w.Write(files[:1]); err != nil || !changed {
		t.Fatalf("replacing write: changed=%v err=%v", changed, err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(entries) != 4 { // a, ..data, the current and the previous generation
		t.Fatalf("entries after replace: %v", names)
	}
}
