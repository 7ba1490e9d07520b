package atomicwriter

import (
	"fmt"
	"io/fs"
	"strings"

	"golang.org/x/sys/unix"
)

// ReplaceFile writes one file of dir atomically: name.tmp is created with
// mode, written and renamed over name, so a reader sees the old or the new
// content, never a part. Neither dir nor name is followed if a symlink.
func ReplaceFile(dir, name string, data []byte, mode fs.FileMode) error {
	if strings.Contains(name, "/") || name == "" || name == "." || name == ".." {
		return fmt.Errorf("file name %q is not a plain name", name)
	}
	dfd, err := openat(unix.AT_FDCWD, dir, dirFlags, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	return ReplaceFileAt(dfd, name, data, mode)
}

// ReplaceFileAt is ReplaceFile in the directory dfd (any descriptor of it,
// O_PATH included).
func ReplaceFileAt(dfd int, name string, data []byte, mode fs.FileMode) error {
	if strings.Contains(name, "/") || name == "" || name == "." || name == ".." {
		return fmt.Errorf("file name %q is not a plain name", name)
	}
	tmp := name + ".tmp"
	fd, err := openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(mode.Perm()))
	if err != nil {
		return fmt.Errorf("creating %s: %w", tmp, err)
	}
	werr := writeAll(fd, data)
	if werr == nil && uint32(mode.Perm())&processUmask() != 0 {
		werr = fchmod(fd, uint32(mode.Perm()))
	}
	if cerr := unix.Close(fd); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = renameat(dfd, tmp, dfd, name)
	}
	if werr != nil {
		unlinkat(dfd, tmp, 0)
		return fmt.Errorf("writing %s: %w", name, werr)
	}
	return nil
}
