package atomicwriter

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Measure predicts what the kernel charges: write sets with the writer onto
// a real tmpfs and compare with statfs (pages and inodes in use).
func TestMeasureMatchesTmpfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	long := strings.Repeat("n", 200)
	sets := map[string][]File{
		"small files":    {{Path: "a", Data: []byte("x")}, {Path: "b", Data: make([]byte, 4097)}, {Path: "c"}},
		"nested":         {{Path: "d/e/f", Data: []byte("1")}, {Path: "d/e/g", Data: []byte("2")}, {Path: "d/h", Data: []byte("3")}, {Path: "i/j", Data: []byte("4")}},
		"long top names": {{Path: long + "1", Data: []byte("x")}, {Path: long + "2", Data: []byte("y")}, {Path: strings.Repeat("s", 120), Data: []byte("z")}},
		"deep":           {{Path: strings.Repeat("d/", 40) + "f", Data: []byte("x")}},
	}
	for name, files := range sets {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := unix.Mount("measure-test", dir, "tmpfs", 0, "size=64m,nr_inodes=10000"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
			var before unix.Statfs_t
			unix.Statfs(dir, &before)
			if _, err := New(dir).Write(files); err != nil {
				t.Fatal(err)
			}
			var after unix.Statfs_t
			unix.Statfs(dir, &after)
			u := Measure(files)
			pages := int64(before.Bfree-after.Bfree) * after.Bsize
			inodes := int(before.Ffree - after.Ffree)
			// ..data and the generation directory come on top of Measure's counts.
			if pages != u.Bytes || inodes != u.Files+u.Dirs+u.Links+2 {
				t.Fatalf("tmpfs charged %d bytes and %d inodes; Measure says %d bytes, %d files, %d dirs, %d links",
					pages, inodes, u.Bytes, u.Files, u.Dirs, u.Links)
			}
		})
	}
}

func TestMeasure(t *testing.T) {
	u := Measure([]File{{Path: "a/b/c", Data: make([]byte, 10)}, {Path: "a/b/d"}, {Path: "a/e", Data: make([]byte, 5000)}, {Path: "f"}})
	want := Usage{Bytes: 3 * pageSize, Files: 4, Dirs: 2, Links: 2, Depth: 3}
	if u != want {
		t.Fatalf("got %+v, want %+v", u, want)
	}
	// 1,500 one-byte files with 200-character names: a page of data and a
	// page of link each.
	var files []File
	for i := range 1500 {
		files = append(files, File{Path: fmt.Sprintf("%0200d", i), Data: []byte("x")})
	}
	if u := Measure(files); u.Bytes != 3000*pageSize {
		t.Fatalf("long names: %d bytes", u.Bytes)
	}
}
