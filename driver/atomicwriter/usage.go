package atomicwriter

import (
	"strings"
)

// Page and symlink costs on tmpfs: file data takes whole pages, and a
// symlink whose target (with its NUL) is longer than 128 bytes takes a page
// of its own (shorter ones live in the inode).
const (
	pageSize        = 4096
	shortSymlinkLen = 128
)

// Usage is what a file set costs on a tmpfs as Write lays it out.
type Usage struct {
	// Bytes is what the tmpfs charges for one generation and the
	// top-level links: data pages plus a page per long symlink.
	Bytes int64
	// Files, Dirs and Links count inodes: files and directories of one
	// generation (the generation directory itself not included), and the
	// top-level symlinks.
	Files, Dirs, Links int
	// Depth is the most path elements of a file path.
	Depth int
}

// Measure returns what files cost, without touching a disk. Paths are
// assumed valid (ValidateFiles).
func Measure(files []File) Usage {
	u := Usage{Files: len(files)}
	dirs := make(map[string]struct{})
	top := make(map[string]struct{}, len(files))
	for _, f := range files {
		u.Bytes += (int64(len(f.Data)) + pageSize - 1) / pageSize * pageSize
		if d := strings.Count(f.Path, "/") + 1; d > u.Depth {
			u.Depth = d
		}
		name, _, _ := strings.Cut(f.Path, "/")
		top[name] = struct{}{}
		for dir, _, ok := cutLast(f.Path); ok; dir, _, ok = cutLast(dir) {
			if _, seen := dirs[dir]; seen {
				break // its parents are counted too
			}
			dirs[dir] = struct{}{}
		}
	}
	u.Dirs = len(dirs)
	u.Links = len(top)
	for name := range top {
		if len(dataDirName)+1+len(name)+1 > shortSymlinkLen {
			u.Bytes += pageSize
		}
	}
	return u
}
