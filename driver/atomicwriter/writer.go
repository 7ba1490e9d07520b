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
// Every operation is a *at(2) call on a directory descriptor the writer
// opened itself with O_NOFOLLOW, on single names (no '/' in a name handed to
// the kernel), so nothing is ever written, read or removed outside the
// directory, whatever symlinks are found in it. Raw descriptors rather than
// os.Root and os.File: a publish writes a handful of small files, and os.File
// costs five extra system calls per open (poller registration) that a
// regular file on tmpfs never needs.
package atomicwriter

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
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
	// Check, when set, is called with the directory's descriptor before
	// anything is read or written; an error stops Write (wrapped in
	// ErrRefused). It checks the very directory written to, so nothing can
	// be swapped in between the check and the writes.
	Check func(dirfd int) error
}

// ErrRefused wraps the error of Writer.Check.
var ErrRefused = errors.New("refusing to write")

// New returns a Writer for dir that leaves group ownership alone.
func New(dir string) *Writer { return &Writer{Dir: dir, GID: -1} }

var seq atomic.Uint64

const (
	dirFlags  = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	readFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
)

// Write makes files the content of the directory. It reports whether
// anything changed. On error the previous content is still in place.
func (w *Writer) Write(files []File) (changed bool, err error) {
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

	oldGen, err := readlinkat(dfd, dataDirName)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("reading %s: %w", dataDirName, err)
	}
	if !isGeneration(oldGen) {
		oldGen = "" // not one of ours: compare nothing with it, remove nothing through it
	}
	w.removeStale(dfd, oldGen)
	var oldTop map[string]struct{}
	if oldGen != "" {
		same, top, err := w.sameContent(dfd, oldGen, files)
		if err == nil && same {
			return false, nil
		}
		oldTop = top
	}

	newGen, err := w.writeGeneration(dfd, files)
	if err != nil {
		return false, err
	}
	newTop := topLevel(files)
	for name := range newTop {
		want := dataDirName + "/" + name
		var st unix.Stat_t
		err := fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK:
			if got, _ := readlinkat(dfd, name); got == want {
				continue // already points into ..data
			}
			if err := unlinkat(dfd, name, 0); err != nil {
				removeAllAt(dfd, newGen)
				return false, fmt.Errorf("replacing link %q: %w", name, err)
			}
		case err == nil:
			removeAllAt(dfd, newGen)
			return false, fmt.Errorf("volume directory has a non-symlink entry %q where a file link belongs", name)
		case !errors.Is(err, unix.ENOENT):
			removeAllAt(dfd, newGen)
			return false, fmt.Errorf("checking %q: %w", name, err)
		}
		if err := symlinkat(want, dfd, name); err != nil {
			removeAllAt(dfd, newGen)
			return false, fmt.Errorf("linking %q: %w", name, err)
		}
	}
	if err := removeAt(dfd, newDataDirName); err != nil && !errors.Is(err, unix.ENOENT) {
		removeAllAt(dfd, newGen)
		return false, fmt.Errorf("removing %s: %w", newDataDirName, err)
	}
	if err := symlinkat(newGen, dfd, newDataDirName); err != nil {
		removeAllAt(dfd, newGen)
		return false, fmt.Errorf("linking new generation: %w", err)
	}
	if err := renameat(dfd, newDataDirName, dfd, dataDirName); err != nil {
		unlinkat(dfd, newDataDirName, 0)
		removeAllAt(dfd, newGen)
		return false, fmt.Errorf("swapping %s: %w", dataDirName, err)
	}
	// The swap is done: from here on failures only leave garbage that the
	// next Write removes, never a wrong view.
	for name := range oldTop {
		if _, ok := newTop[name]; !ok {
			removeAt(dfd, name)
		}
	}
	if oldGen != "" {
		removeAllAt(dfd, oldGen)
	}
	return true, nil
}

// isGeneration reports whether name can be a generation directory of this
// writer: one reserved ".." name inside the directory.
func isGeneration(name string) bool {
	return strings.HasPrefix(name, "..") && len(name) > 2 && !strings.Contains(name, "/") &&
		name != dataDirName && name != newDataDirName
}

// writeGeneration writes all files into a fresh timestamped directory.
func (w *Writer) writeGeneration(dfd int, files []File) (string, error) {
	var gen string
	for {
		gen = time.Now().UTC().Format("..2006_01_02_15_04_05.") + strconv.FormatUint(seq.Add(1), 10)
		err := mkdirat(dfd, gen, dirMode)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("creating generation directory: %w", err)
		}
	}
	if err := w.fixDir(dfd, gen); err != nil {
		removeAllAt(dfd, gen)
		return "", err
	}
	gfd, err := openat(dfd, gen, dirFlags, 0)
	if err != nil {
		removeAllAt(dfd, gen)
		return "", fmt.Errorf("opening generation directory: %w", err)
	}
	defer unix.Close(gfd)
	for _, f := range files {
		if err := w.writeFile(gfd, f); err != nil {
			removeAllAt(dfd, gen)
			return "", err
		}
	}
	return gen, nil
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
	if werr == nil && w.GID >= 0 {
		werr = fchown(fd, w.GID)
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

func (w *Writer) fixDir(dfd int, name string) error {
	if w.GID >= 0 {
		if err := lchownat(dfd, name, w.GID); err != nil {
			return fmt.Errorf("setting the group of %q: %w", name, err)
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
	if c.w.GID >= 0 && int(st.Gid) != c.w.GID {
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

// removeStale deletes generation directories left by an interrupted Write.
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

func closeUnless(fd, keep int) {
	if fd != keep {
		unix.Close(fd)
	}
}

var direntBufs = sync.Pool{New: func() any { return new([8192]byte) }}

// dirent is one directory entry: its name and its type bits (S_IFDIR, ...).
type dirent struct {
	name string
	typ  uint32
}

// readDirAt lists the directory fd without "." and "..". It reads from the
// descriptor's offset, so each descriptor is listed once (the *at calls
// made on it do not care where its offset is). Types come from getdents;
// only a file system that does not report them costs an fstatat per entry.
func readDirAt(fd int) ([]dirent, error) {
	var out []dirent
	bp := direntBufs.Get().(*[8192]byte)
	defer direntBufs.Put(bp)
	buf := bp[:]
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(b[16]) | int(b[17])<<8
			if reclen < 19 || reclen > len(b) {
				return out, errors.New("malformed directory entry")
			}
			typ, name := b[18], b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if string(name) == "." || string(name) == ".." {
				continue
			}
			e := dirent{name: string(name), typ: uint32(typ) << 12} // DT_x << 12 == S_IFx
			if typ == unix.DT_UNKNOWN {
				var st unix.Stat_t
				if err := fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					continue // gone meanwhile
				}
				e.typ = st.Mode & unix.S_IFMT
			}
			out = append(out, e)
		}
	}
}

// removeAllAt removes name below dfd and, if it is a directory, everything
// in it, without following symlinks. A missing name is fine.
func removeAllAt(dfd int, name string) error {
	err := unlinkat(dfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sub, err := openat(dfd, name, dirFlags, 0)
	if err != nil {
		return err
	}
	entries, _ := readDirAt(sub)
	for _, e := range entries {
		removeAllAt(sub, e.name)
	}
	unix.Close(sub)
	if err := unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// removeAt removes a file, symlink or empty directory.
func removeAt(dfd int, name string) error {
	err := unlinkat(dfd, name, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unlinkat(dfd, name, unix.AT_REMOVEDIR)
	}
	return err
}

var (
	umaskOnce sync.Once
	umask     uint32
)

// processUmask is the umask of the process, read once from
// /proc/self/status (reading it with umask(2) would change it for a moment
// under every other goroutine). Unknown, it is taken as 0777: every mode is
// then set explicitly after create.
func processUmask() uint32 {
	umaskOnce.Do(func() {
		umask = 0o777
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					umask = uint32(m) & 0o777
				}
				return
			}
		}
	})
	return umask
}

// System calls, retried on EINTR (Go installs its signal handlers with
// SA_RESTART, but a file system may still return EINTR).

// Each wrapper loops itself rather than taking a closure: a closure that
// captures its arguments is an allocation per call on the publish path.

func openat(dfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dfd, name, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func fstatat(dfd int, name string, st *unix.Stat_t, flags int) error {
	for {
		if err := unix.Fstatat(dfd, name, st, flags); err != unix.EINTR {
			return err
		}
	}
}

func mkdirat(dfd int, name string, mode uint32) error {
	for {
		if err := unix.Mkdirat(dfd, name, mode); err != unix.EINTR {
			return err
		}
	}
}

func unlinkat(dfd int, name string, flags int) error {
	for {
		if err := unix.Unlinkat(dfd, name, flags); err != unix.EINTR {
			return err
		}
	}
}

func symlinkat(target string, dfd int, name string) error {
	for {
		if err := unix.Symlinkat(target, dfd, name); err != unix.EINTR {
			return err
		}
	}
}

func renameat(olddfd int, oldname string, newdfd int, newname string) error {
	for {
		if err := unix.Renameat(olddfd, oldname, newdfd, newname); err != unix.EINTR {
			return err
		}
	}
}

func fchown(fd, gid int) error {
	for {
		if err := unix.Fchown(fd, -1, gid); err != unix.EINTR {
			return err
		}
	}
}

func lchownat(dfd int, name string, gid int) error {
	for {
		if err := unix.Fchownat(dfd, name, -1, gid, unix.AT_SYMLINK_NOFOLLOW); err != unix.EINTR {
			return err
		}
	}
}

func fchmod(fd int, mode uint32) error {
	for {
		if err := unix.Fchmod(fd, mode); err != unix.EINTR {
			return err
		}
	}
}

// fchmodat does not follow a final symlink only because callers pass
// names they just created with mkdirat.
func fchmodat(dfd int, name string, mode uint32) error {
	for {
		if err := unix.Fchmodat(dfd, name, mode, 0); err != unix.EINTR {
			return err
		}
	}
}

func readlinkat(dfd int, name string) (string, error) {
	var buf [256]byte
	for {
		n, err := unix.Readlinkat(dfd, name, buf[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return "", err
		case n < len(buf):
			return string(buf[:n]), nil
		}
		// Longer than any name we write: not ours, but report it whole.
		big := make([]byte, unix.PathMax)
		n, err = unix.Readlinkat(dfd, name, big)
		if err != nil {
			return "", err
		}
		return string(big[:n]), nil
	}
}

func writeAll(fd int, data []byte) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func readOnce(fd int, buf []byte) (int, error) {
	for {
		n, err := unix.Read(fd, buf)
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

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
