package atomicwriter

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
)

// ReadBack reads the regular files below root that someone else wrote (an
// external provider writing into the volume itself): no symlink leaves
// root, directories whose names start with ".." and the file skip are left
// out, and it stops with an error beyond maxFiles files or maxBytes bytes.
// Wipe the files after use.
func ReadBack(root *os.Root, skip string, maxFiles int, maxBytes int64) ([]File, error) {
	var files []File
	var total int64
	errTooMuch := errors.New("too many files or bytes")
	err := fs.WalkDir(root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if p != "." && strings.HasPrefix(path.Base(p), "..") {
				return fs.SkipDir
			}
			return nil
		}
		if p == skip || !e.Type().IsRegular() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		if total += fi.Size(); total > maxBytes || len(files) >= maxFiles {
			return errTooMuch
		}
		data, err := root.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, File{Path: p, Mode: fi.Mode().Perm(), Data: data})
		return nil
	})
	if err != nil {
		Wipe(files)
		return nil, err
	}
	return files, nil
}

// Wipe zeroes the contents of files.
func Wipe(files []File) {
	for _, f := range files {
		clear(f.Data)
	}
}
