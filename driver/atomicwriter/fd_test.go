package atomicwriter

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A failing Check stops Write before anything is read or written.
func TestWriteCheckRefuses(t *testing.T) {
	dir := t.TempDir()
	bad := errors.New("not the file system we want")
	calls := 0
	w := &Writer{Dir: dir, GID: -1, Check: func(fd int) error { calls++; return bad }}
	_, err := w.Write([]File{{Path: "a", Mode: 0o644, Data: []byte("x")}})
	if !errors.Is(err, ErrRefused) || !errors.Is(err, bad) || calls != 1 {
		t.Fatalf("want ErrRefused wrapping the check error, got %v (%d calls)", err, calls)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("wrote despite the refusal: %v", entries)
	}
}

// Write refuses a directory that is itself a symlink.
func TestWriteDoesNotFollowDir(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := New(link).Write([]File{{Path: "a", Mode: 0o644, Data: []byte("x")}}); err == nil {
		t.Fatal("wrote through a symlinked directory")
	}
	if entries, _ := os.ReadDir(real); len(entries) != 0 {
		t.Fatalf("wrote through a symlink: %v", entries)
	}
}

// A generation tampered with a symlink in place of a directory is not the
// same content: the next Write rewrites it and reads nothing through the link.
func TestWriteTamperedGenerationRewritten(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	files := []File{{Path: "d/f", Mode: 0o644, Data: []byte("v")}}
	w := New(dir)
	if _, err := w.Write(files); err != nil {
		t.Fatal(err)
	}
	gen, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.WriteFile(filepath.Join(outside, "f"), []byte("v"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, gen, "d")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, gen, "d")); err != nil {
		t.Fatal(err)
	}
	changed, err := w.Write(files)
	if err != nil || !changed {
		t.Fatalf("tampered generation: changed=%v err=%v", changed, err)
	}
	if got := readAll(t, dir); got["d/f"] != "v" {
		t.Fatalf("content %v", got)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "f")); err != nil || string(b) != "v" {
		t.Fatalf("file outside touched: %q %v", b, err)
	}
}

// Modes are exact whatever the umask takes away at create time.
func TestWriteModeDespiteUmask(t *testing.T) {
	if processUmask()&0o022 == 0 {
		t.Skip("umask does not mask group/other write bits")
	}
	dir := t.TempDir()
	if _, err := New(dir).Write([]File{{Path: "w", Mode: 0o666, Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "w")); err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
}

func TestReplaceFile(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A symlink at the name is replaced, not written through.
	if err := os.Symlink(victim, filepath.Join(dir, "m")); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceFile(dir, "m", []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(dir, "m"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("m: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("wrote through the symlink: %q", b)
	}
	// A symlink at the temporary name is not followed either.
	if err := os.Symlink(victim, filepath.Join(dir, "m.tmp")); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceFile(dir, "m", []byte("newer"), 0o600); err == nil {
		t.Fatal("wrote through a symlinked temporary file")
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Fatalf("wrote through the symlink: %q", b)
	}
	if err := ReplaceFile(dir, "../x", nil, 0o600); err == nil {
		t.Fatal("accepted a path")
	}
}

// WriteFresh writes through an O_PATH descriptor (what a tmpfs mount
// returns) the same layout Write makes: a later Write of the same files
// finds nothing to change, and one of other files swaps them.
func TestWriteFreshThroughPathDescriptor(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	files := []File{{Path: "a", Mode: 0o640, Data: []byte("x")}, {Path: "d/b", Mode: 0o644, Data: []byte("y")}}
	if err := New(dir).WriteFresh(fd, files); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "d", "b")); err != nil || string(b) != "y" {
		t.Fatalf("d/b = %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "a")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("a: %v, %v", fi, err)
	}
	if changed, err := New(dir).Write(files); err != nil || changed {
		t.Fatalf("same files again: changed=%v err=%v", changed, err)
	}
	if changed, err := New(dir).Write(files[:1]); err != nil || !changed {
		t.Fatalf("fewer files: changed=%v err=%v", changed, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("d still linked after the swap: %v", err)
	}
	if err := New(dir).WriteFresh(fd, []File{{Path: "../x", Mode: 0o644}}); err == nil {
		t.Fatal("WriteFresh took a path out of the directory")
	}
}
