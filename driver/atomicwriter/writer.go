// Package atomicwriter writes a complete set of files into a directory so
// that a reader never sees a half-written or mixed set, in the style of
// kubelet's pkg/volume/util/atomic_writer.go:
//
//	<dir>/..2025_01_02_15_04_05.123456789   the files of one generation
//	<dir>/..data -> ..2025_01_02_...         swapped with one rename(2)
//	<dir>/<top-level name> -> ..data/<name>  what the application reads
//
// Steps of Write:
//  1. validate the file set;
//  2. if the current generation has exactly this content, stop;
//  3. write every file into a new timestamped directory;
//  4. create the top-level symlinks that are missing;
//  5. point ..data at the new directory (symlink ..data_tmp, rename over ..data);
//  6. remove top-level symlinks that the new set no longer has;
//  7. remove the old generation.
//
// Every operation goes through an os.Root, so nothing is ever written
// outside the directory, whatever symlinks are found in it.
package atomicwriter

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
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
}

// New returns a Writer for dir that leaves group ownership alone.
func New(dir string) *Writer { return &Writer{Dir: dir, GID: -1} }

var seq atomic.Uint64

// Write makes files the content of the directory. It reports whether
// anything changed. On error the previous content is still in place.
func (w *Writer) Write(files []File) (changed bool, err error) {
	if err := ValidateFiles(files); err != nil {
		return false, err
	}
	root, err := os.OpenRoot(w.Dir)
	if err != nil {
		return false, fmt.Errorf("opening volume directory: %w", err)
	}
	defer root.Close()

	oldGen, err := root.Readlink(dataDirName)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("reading %s: %w", dataDirName, err)
	}
	w.removeStale(root, oldGen)
	var oldTop map[string]struct{}
	if oldGen != "" {
		same, top, err := w.sameContent(root, oldGen, files)
		if err == nil && same {
			return false, nil
		}
		oldTop = top
	}

	newGen, err := w.writeGeneration(root, files)
	if err != nil {
		return false, err
	}
	newTop := topLevel(files)
	for name := range newTop {
		want := path.Join(dataDirName, name)
		fi, err := root.Lstat(name)
		switch {
		case err == nil && fi.Mode()&fs.ModeSymlink != 0:
			if got, _ := root.Readlink(name); got == want {
				continue // already points into ..data
			}
			if err := root.Remove(name); err != nil {
				root.RemoveAll(newGen)
				return false, err
			}
		case err == nil:
			root.RemoveAll(newGen)
			return false, fmt.Errorf("volume directory has a non-symlink entry %q where a file link belongs", name)
		case !errors.Is(err, fs.ErrNotExist):
			root.RemoveAll(newGen)
			return false, err
		}
		if err := root.Symlink(want, name); err != nil {
			root.RemoveAll(newGen)
			return false, fmt.Errorf("linking %q: %w", name, err)
		}
	}
	if err := root.Remove(newDataDirName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		root.RemoveAll(newGen)
		return false, err
	}
	if err := root.Symlink(newGen, newDataDirName); err != nil {
		root.RemoveAll(newGen)
		return false, fmt.Errorf("linking new generation: %w", err)
	}
	if err := root.Rename(newDataDirName, dataDirName); err != nil {
		root.Remove(newDataDirName)
		root.RemoveAll(newGen)
		return false, fmt.Errorf("swapping %s: %w", dataDirName, err)
	}
	// The swap is done: from here on failures only leave garbage that the
	// next Write removes, never a wrong view.
	for name := range oldTop {
		if _, ok := newTop[name]; !ok {
			root.Remove(name)
		}
	}
	if oldGen != "" {
		root.RemoveAll(oldGen)
	}
	return true, nil
}

// writeGeneration writes all files into a fresh timestamped directory.
func (w *Writer) writeGeneration(root *os.Root, files []File) (string, error) {
	var gen string
	for {
		gen = time.Now().UTC().Format("..2006_01_02_15_04_05.") + strconv.FormatUint(seq.Add(1), 10)
		err := root.Mkdir(gen, dirMode)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("creating generation directory: %w", err)
		}
	}
	if err := w.fixDir(root, gen); err != nil {
		root.RemoveAll(gen)
		return "", err
	}
	for _, f := range files {
		if err := w.writeFile(root, gen, f); err != nil {
			root.RemoveAll(gen)
			return "", err
		}
	}
	return gen, nil
}

func (w *Writer) writeFile(root *os.Root, gen string, f File) error {
	full := path.Join(gen, f.Path)
	if dir := path.Dir(f.Path); dir != "." {
		// Create each level ourselves so every directory gets our mode and group.
		p := gen
		for _, el := range strings.Split(dir, "/") {
			p = path.Join(p, el)
			err := root.Mkdir(p, dirMode)
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("creating directory for %q: %w", f.Path, err)
			}
			if err := w.fixDir(root, p); err != nil {
				return err
			}
		}
	}
	fh, err := root.OpenFile(full, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating %q: %w", f.Path, err)
	}
	_, werr := fh.Write(f.Data)
	if werr == nil && w.GID >= 0 {
		werr = fh.Chown(-1, w.GID)
	}
	if werr == nil {
		werr = fh.Chmod(f.Mode) // after writing and chown: umask and chown would otherwise change it
	}
	cerr := fh.Close()
	if werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("writing %q: %w", f.Path, werr)
	}
	return nil
}

func (w *Writer) fixDir(root *os.Root, name string) error {
	if w.GID >= 0 {
		if err := root.Lchown(name, -1, w.GID); err != nil {
			return err
		}
	}
	return root.Chmod(name, dirMode)
}

// sameContent reports whether generation gen holds exactly files (paths,
// modes, group, bytes), and returns its top-level names.
func (w *Writer) sameContent(root *os.Root, gen string, files []File) (bool, map[string]struct{}, error) {
	genRoot, err := root.OpenRoot(gen)
	if err != nil {
		return false, nil, err
	}
	defer genRoot.Close()
	top := map[string]struct{}{}
	var existing []string
	err = fs.WalkDir(genRoot.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		if !strings.Contains(p, "/") {
			top[p] = struct{}{}
		}
		if !d.IsDir() {
			existing = append(existing, p)
		}
		return nil
	})
	if err != nil || len(existing) != len(files) {
		return false, top, err
	}
	for _, f := range files {
		fi, err := genRoot.Lstat(f.Path)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != f.Mode || fi.Size() != int64(len(f.Data)) {
			return false, top, nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); w.GID >= 0 && (!ok || int(st.Gid) != w.GID) {
			return false, top, nil
		}
		data, err := genRoot.ReadFile(f.Path)
		if err != nil || !bytes.Equal(data, f.Data) {
			return false, top, nil
		}
	}
	return true, top, nil
}

// removeStale deletes generation directories left by an interrupted Write.
func (w *Writer) removeStale(root *os.Root, current string) {
	d, err := root.Open(".")
	if err != nil {
		return
	}
	entries, _ := d.ReadDir(-1)
	d.Close()
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() && strings.HasPrefix(name, "..") && name != current {
			root.RemoveAll(name)
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
