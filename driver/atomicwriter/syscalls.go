package atomicwriter

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Flags of every directory and every file the writer opens: never through a
// symlink, never inherited by a child process.
const (
	dirFlags  = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	readFlags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
)

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

// fchown and lchownat take -1 for "leave it".
func fchown(fd, uid, gid int) error {
	for {
		if err := unix.Fchown(fd, uid, gid); err != unix.EINTR {
			return err
		}
	}
}

func lchownat(dfd int, name string, uid, gid int) error {
	for {
		if err := unix.Fchownat(dfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != unix.EINTR {
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
