// Package atomicwriter writes a complete set of files into a directory so
// that a reader never sees a half-written or mixed set, in the style of
// kubelet's pkg/volume/util/atomic_writer.go:
//
//	<dir>/..2025_01_02_15_04_05.123456789   the files of one generation
//	<dir>/..data -> ..2025_01_02_...         swapped with one rename(2)
//	<dir>/<top-level name> -> ..data/<name>  what the application reads
//
// Steps of Write (the same numbers mark the code):
//  1. validate the file set;
//  2. remove generations older than the current one (the one the last Write
//     kept); if the current generation has exactly this content, stop;
//  3. write every file into a new timestamped directory (after Grow allows it);
//  4. create the top-level symlinks that are missing;
//  5. point ..data at the new directory (symlink ..data_tmp, rename over ..data);
//  6. remove top-level symlinks that the new set no longer has;
//  7. keep the old generation until the next Write (its step 2).
//
// Step 7 is where this writer differs from kubelet's, which removes the old
// generation at once: a reader that resolved ..data to the old generation
// just before the swap, and is preempted before it looks the file up in it,
// would then find no file (ENOENT) where the file was a moment ago. Kept
// until the next Write (a refresh later, never less), the old generation
// answers it. The cost: between two writes the directory holds two
// generations (the caller's budget counts both), the previous
// values among them, in the same directory only the reader could read
// before.
//
// A failure in steps 3-5 removes the new generation (one deferred cleanup)
// and leaves the previous content in place; after step 5 failures only leave
// garbage that the next Write removes, never a wrong view.
//
// Files: writer.go writes, compare.go compares a generation with a file
// set, syscalls.go holds the system calls, replace.go replaces one file.
//
// Every operation is a *at(2) call on a directory descriptor the writer
// opened itself with O_NOFOLLOW, on single names (no '/' in a name handed to
// the kernel), so nothing is ever written, read or removed outside the
// directory, whatever symlinks are found in it. Raw descriptors rather than
// os.Root and os.File: a publish writes a handful of small files, and os.File
// costs five extra system calls per open (poller registration) that a
// regular file on tmpfs never needs.
package atomicwriter

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dataDirName    = "..data"
	newDataDirName = "..data_tmp"
	dirMode        = 0o755
)

// File is one file to write. Path is relative and slash-separated.
type File struct {
	Path string
	Mode fs.FileMode
	Data []byte
}

// Writer writes file sets into one directory. It is not safe for concurrent
// use on the same directory; the caller serializes (the driver holds the
// volume lock).
type Writer struct {
	Dir string
	// GID, when >= 0, becomes the group of every file and directory written
	// (the pod's fsGroup), so group-readable modes work for the pod.
	GID int
	// UID, when > 0, becomes the owner of every file and directory written
	// (the local agent's user); 0 leaves them root's.
	UID int
	// Check, when set, is called with the directory's descriptor before
	// anything is read or written; an error stops Write (wrapped in
	// ErrRefused). It checks the very directory written to, so nothing can
	// be swapped in between the check and the writes.
	Check func(dirfd int) error
	// Grow, when set, is called once the content is known to differ, before
	// a new generation is written (which holds pages beside the old one
	// until the swap); an error stops Write with nothing changed.
	Grow func() error
}

// owner is the uid argument of chown: -1 leaves the owner.
func (w *Writer) owner() int {
	if w.UID > 0 {
		return w.UID
	}
	return -1
}

// ErrRefused wraps the error of Writer.Check.
var ErrRefused = errors.New("refusing to write")

// New returns a Writer for dir that leaves group ownership alone.
func New(dir string) *Writer { return &Writer{Dir: dir, GID: -1} }

// seq makes generation names unique within the process.
var seq atomic.Uint64

// Write makes files the content of the directory. It reports whether
// anything changed. On error the previous content is still in place.
func (w *Writer) Write(files []File) (changed bool, err error) {
	// 1. Validate.
	if err := ValidateFiles(files); err != nil {
		return false, err
	}
	dfd, err := openat(unix.AT_FDCWD, w.Dir, dirFlags, 0)
	if err != nil {
		return false, fmt.Errorf("opening volume directory: %w", &fs.PathError{Op: "open", Path: w.Dir, Err: err})
	}
	defer unix.Close(dfd)
	if w.Check != nil {
		if err := w.Check(dfd); err != nil {
			return false, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	return w.write(dfd, files, false)
}

// WriteFresh writes files as the first generation of the directory dfd
// (any descriptor of it, O_PATH included: the root a tmpfs mount returned),
// which the caller knows to be empty because it just made it, and checked
// (Check is not called). Step 2 is skipped: there is no generation to
// compare with and no leftover to remove, which spares a readlink and a
// directory listing.
func (w *Writer) WriteFresh(dfd int, files []File) error {
	if err := ValidateFiles(files); err != nil {
		return err
	}
	_, err := w.write(dfd, files, true)
	return err
}

// write is Write's steps 2-7 on the open directory dfd; fresh skips 2.
func (w *Writer) write(dfd int, files []File, fresh bool) (changed bool, err error) {
	// 2. Stop if the current generation already holds exactly files.
	var oldTop map[string]struct{}
	if !fresh {
		var same bool
		if oldTop, same, err = w.current(dfd, files); err != nil || same {
			return false, err
		}
	}

	// 3. Write a new generation. Until the swap in 5 succeeds, every
	// failure ends here: the new generation goes, the old view stays.
	if w.Grow != nil {
		if err := w.Grow(); err != nil {
			return false, err
		}
	}
	newGen, err := newGeneration(dfd)
	if err != nil {
		return false, err
	}
	swapped := false
	defer func() {
		if !swapped {
			unlinkat(dfd, newDataDirName, 0)
			removeAllAt(dfd, newGen)
		}
	}()
	if err := w.writeGeneration(dfd, newGen, files); err != nil {
		return false, err
	}

	// 4. Link the top-level names that are missing.
	newTop := topLevel(files)
	if err := linkTopLevel(dfd, newTop); err != nil {
		return false, err
	}

	// 5. Swap ..data. A ..data_tmp left by a crash is removed only when
	// it is in the way (one system call fewer in the usual case).
	err = symlinkat(newGen, dfd, newDataDirName)
	if errors.Is(err, unix.EEXIST) {
		if err := removeAt(dfd, newDataDirName); err != nil && !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("removing %s: %w", newDataDirName, err)
		}
		err = symlinkat(newGen, dfd, newDataDirName)
	}
	if err != nil {
		return false, fmt.Errorf("linking new generation: %w", err)
	}
	if err := renameat(dfd, newDataDirName, dfd, dataDirName); err != nil {
		return false, fmt.Errorf("swapping %s: %w", dataDirName, err)
	}
	swapped = true

	// 6. Unlink top-level names the new set no longer has.
	for name := range oldTop {
		if _, ok := newTop[name]; !ok {
			removeAt(dfd, name)
		}
	}
	// 7. Keep the old generation: the next Write removes it.
	return true, nil
}

// current is Write's step 2: the current generation's top-level names and
// whether it holds exactly files, once every other generation is removed (the
// one the last Write kept, and leftovers of interrupted writes).
func (w *Writer) current(dfd int, files []File) (top map[string]struct{}, same bool, err error) {
	gen, err := readlinkat(dfd, dataDirName)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, false, fmt.Errorf("reading %s: %w", dataDirName, err)
	}
	if !isGeneration(gen) {
		gen = "" // not one of ours: compare nothing with it, remove nothing through it
	}
	w.removeStale(dfd, gen)
	if gen == "" {
		return nil, false, nil
	}
	same, top, err = w.sameContent(dfd, gen, files)
	return top, err == nil && same, nil
}

// isGeneration reports whether name can be a generation directory of this
// writer: one reserved ".." name inside the directory.
func isGeneration(name string) bool {
	return strings.HasPrefix(name, "..") && len(name) > 2 && !strings.Contains(name, "/") &&
		name != dataDirName && name != newDataDirName
}

// newGeneration creates a fresh, empty, timestamped generation directory.
func newGeneration(dfd int) (string, error) {
	for {
		gen := time.Now().UTC().Format("..2006_01_02_15_04_05.") + strconv.FormatUint(seq.Add(1), 10)
		err := mkdirat(dfd, gen, dirMode)
		if err == nil {
			return gen, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("creating generation directory: %w", err)
		}
	}
}

// writeGeneration writes all files into the generation directory gen.
func (w *Writer) writeGeneration(dfd int, gen string, files []File) error {
	if err := w.fixDir(dfd, gen); err != nil {
		return err
	}
	gfd, err := openat(dfd, gen, dirFlags, 0)
	if err != nil {
		return fmt.Errorf("opening generation directory: %w", err)
	}
	defer unix.Close(gfd)
	for _, f := range files {
		if err := w.writeFile(gfd, f); err != nil {
			return err
		}
	}
	return nil
}

// writeFile creates f below the generation directory gfd. Directories on
// the way are created (or, made by an earlier file, opened) one level at a
// time, never following a symlink.
func (w *Writer) writeFile(gfd int, f File) error {
	parent, name := gfd, f.Path
	if dir, base, ok := cutLast(f.Path); ok {
		name = base
		for el := range strings.SplitSeq(dir, "/") {
			err := mkdirat(parent, el, dirMode)
			created := err == nil
			if err != nil && !errors.Is(err, unix.EEXIST) {
				closeUnless(parent, gfd)
				return fmt.Errorf("creating directory for %q: %w", f.Path, err)
			}
			if created {
				if err := w.fixDir(parent, el); err != nil {
					closeUnless(parent, gfd)
					return fmt.Errorf("creating directory for %q: %w", f.Path, err)
				}
			}
			next, err := openat(parent, el, dirFlags, 0)
			closeUnless(parent, gfd)
			if err != nil {
				return fmt.Errorf("creating directory for %q: %w", f.Path, err)
			}
			parent = next
		}
		defer closeUnless(parent, gfd)
	}
	// Created with its final mode: the file is not reachable through ..data
	// until the swap, and is never more open than it will be.
	fd, err := openat(parent, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(f.Mode))
	if err != nil {
		return fmt.Errorf("creating %q: %w", f.Path, err)
	}
	werr := writeAll(fd, f.Data)
	if werr == nil && (w.GID >= 0 || w.UID > 0) {
		werr = fchown(fd, w.owner(), w.GID)
	}
	if werr == nil && uint32(f.Mode)&processUmask() != 0 {
		// The umask took bits away at create time; chown never clears
		// permission bits, so this is the last word.
		werr = fchmod(fd, uint32(f.Mode))
	}
	cerr := unix.Close(fd)
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("writing %q: %w", f.Path, werr)
	}
	return nil
}

// fixDir gives the directory name, just made by mkdirat, its group and
// (when the umask took bits away) its mode.
func (w *Writer) fixDir(dfd int, name string) error {
	if w.GID >= 0 || w.UID > 0 {
		if err := lchownat(dfd, name, w.owner(), w.GID); err != nil {
			return fmt.Errorf("setting the owner of %q: %w", name, err)
		}
	}
	if dirMode&processUmask() != 0 {
		// fchmodat does not follow: name was just made by mkdirat.
		if err := fchmodat(dfd, name, dirMode); err != nil {
			return fmt.Errorf("setting the mode of %q: %w", name, err)
		}
	}
	return nil
}

// linkTopLevel makes each top-level name a symlink into ..data, replacing
// a symlink that points elsewhere. Anything else at such a name is refused.
// The link is tried first: on a first write every name is new, and one
// symlinkat is all it costs.
func linkTopLevel(dfd int, top map[string]struct{}) error {
	for name := range top {
		want := dataDirName + "/" + name
		err := symlinkat(want, dfd, name)
		if err == nil {
			continue
		}
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("linking %q: %w", name, err)
		}
		got, err := readlinkat(dfd, name)
		switch {
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("volume directory has a non-symlink entry %q where a file link belongs", name)
		case err != nil:
			return fmt.Errorf("checking %q: %w", name, err)
		case got == want:
			continue // already points into ..data
		}
		if err := unlinkat(dfd, name, 0); err != nil {
			return fmt.Errorf("replacing link %q: %w", name, err)
		}
		if err := symlinkat(want, dfd, name); err != nil {
			return fmt.Errorf("linking %q: %w", name, err)
		}
	}
	return nil
}

// removeStale deletes every generation directory but current: the one the
// last Write kept (its step 7) and any an interrupted Write left.
func (w *Writer) removeStale(dfd int, current string) {
	entries, err := readDirAt(dfd)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.typ == unix.S_IFDIR && strings.HasPrefix(e.name, "..") && e.name != current {
			removeAllAt(dfd, e.name)
		}
	}
}

func topLevel(files []File) map[string]struct{} {
	top := make(map[string]struct{}, len(files))
	for _, f := range files {
		name, _, _ := strings.Cut(f.Path, "/")
		top[name] = struct{}{}
	}
	return top
}

func cutLast(p string) (dir, base string, ok bool) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p, false
	}
	return p[:i], p[i+1:], true
}
