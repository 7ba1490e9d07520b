package atomicwriter

import (
	"bytes"

	"golang.org/x/sys/unix"
)

// sameContent reports whether generation gen holds exactly files (paths,
// modes, group, bytes) and nothing else, and returns its top-level names.
// Anything but regular files and directories (a symlink, say) makes it
// differ; nothing is followed.
func (w *Writer) sameContent(dfd int, gen string, files []File) (bool, map[string]struct{}, error) {
	gfd, err := openat(dfd, gen, dirFlags, 0)
	if err != nil {
		return false, nil, err
	}
	defer unix.Close(gfd)
	entries, err := readDirAt(gfd)
	if err != nil {
		return false, nil, err
	}
	top := make(map[string]struct{}, len(entries))
	for _, e := range entries {
		top[e.name] = struct{}{}
	}
	want := make(map[string]*File, len(files))
	for i := range files {
		want[files[i].Path] = &files[i]
	}
	c := comparer{w: w, want: want}
	if !c.dir(gfd, "", entries) || c.matched != len(files) {
		return false, top, c.err
	}
	return true, top, nil
}

type comparer struct {
	w       *Writer
	want    map[string]*File
	matched int
	buf     []byte
	err     error
}

// dir compares the entries of the directory dfd (at path prefix) and below.
func (c *comparer) dir(dfd int, prefix string, entries []dirent) bool {
	for _, e := range entries {
		p := prefix + e.name
		switch e.typ {
		case unix.S_IFDIR:
			sub, err := openat(dfd, e.name, dirFlags, 0)
			if err != nil {
				c.err = err
				return false
			}
			subEntries, err := readDirAt(sub)
			same := err == nil && c.dir(sub, p+"/", subEntries)
			unix.Close(sub)
			if err != nil {
				c.err = err
			}
			if !same {
				return false
			}
		case unix.S_IFREG:
			f, ok := c.want[p]
			if !ok || !c.file(dfd, e.name, f) {
				return false
			}
			c.matched++
		default:
			return false
		}
	}
	return true
}

func (c *comparer) file(dfd int, name string, f *File) bool {
	fd, err := openat(dfd, name, readFlags, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG ||
		st.Mode&0o777 != uint32(f.Mode) || st.Size != int64(len(f.Data)) {
		return false
	}
	if c.w.GID >= 0 && int(st.Gid) != c.w.GID || c.w.UID > 0 && int(st.Uid) != c.w.UID {
		return false
	}
	// One read of one byte more than expected: a regular file returns all
	// it has (anything short just counts as different and is rewritten).
	if need := len(f.Data) + 1; cap(c.buf) < need {
		c.buf = make([]byte, need)
	}
	n, err := readOnce(fd, c.buf[:len(f.Data)+1])
	return err == nil && n == len(f.Data) && bytes.Equal(c.buf[:n], f.Data)
}
