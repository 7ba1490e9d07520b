package tmpfs

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("tmpfs tests need root")
		}
		t.Skip("tmpfs tests need root")
	}
}

func TestMountVerifyListUnmount(t *testing.T) {
	needRoot(t)
	target := filepath.Join(t.TempDir(), "with space")
	if err := os.Mkdir(target, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if err := Mount(target, Options{SizeBytes: 1 << 20, Mode: 0o750, GID: 1234}); err != nil {
		t.Fatal(err)
	}
	if err := Verify(target); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o750 || st.Gid != 1234 {
		t.Fatalf("root mode %o gid %d", st.Mode&0o7777, st.Gid)
	}
	// noexec, nosuid, nodev are in effect.
	var sfs unix.Statfs_t
	if err := unix.Statfs(target, &sfs); err != nil {
		t.Fatal(err)
	}
	for _, f := range []int64{unix.ST_NOEXEC, unix.ST_NOSUID, unix.ST_NODEV} {
		if sfs.Flags&f == 0 {
			t.Fatalf("mount flag %#x missing in %#x", f, sfs.Flags)
		}
	}
	if ok, err := IsMountPoint(target); !ok || err != nil {
		t.Fatalf("IsMountPoint = %v, %v", ok, err)
	}
	list, err := List()
	if err != nil || !slices.Contains(list, target) {
		t.Fatalf("List() = %v, %v; want it to contain %q", list, err, target)
	}
	// The size cap is enforced.
	err = os.WriteFile(filepath.Join(target, "big"), make([]byte, 2<<20), 0o600)
	if !strings.Contains(err.Error(), "no space") {
		t.Fatalf("want ENOSPC, got %v", err)
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("target still there: %v", err)
	}
	if err := Unmount(target); err != nil {
		t.Fatalf("second unmount: %v", err)
	}
}

func TestVerifyRefusesOtherFileSystemsAndSymlinks(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	var sfs unix.Statfs_t
	unix.Statfs(dir, &sfs)
	if sfs.Type != unix.TMPFS_MAGIC {
		if err := Verify(dir); err == nil {
			t.Fatal("Verify accepted a non-tmpfs directory")
		}
	}
	// A symlink to a real tmpfs is still refused.
	shm := t.TempDir()
	if err := unix.Mount("other", shm, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(shm, unix.MNT_DETACH) })
	link := filepath.Join(dir, "link")
	os.Symlink(shm, link)
	if err := Verify(link); err == nil {
		t.Fatal("Verify followed a symlink")
	}
}

func TestUnmountBusyDetaches(t *testing.T) {
	needRoot(t)
	target := filepath.Join(t.TempDir(), "busy")
	os.Mkdir(target, 0o750)
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if err := Mount(target, Options{SizeBytes: 1 << 16, Mode: 0o750, GID: -1}); err != nil {
		t.Fatal(err)
	}
	// A mount below the tmpfs makes a plain umount fail with EBUSY.
	inner := filepath.Join(target, "inner")
	os.Mkdir(inner, 0o755)
	if err := unix.Mount("inner", inner, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(target); err != nil {
		t.Fatalf("busy unmount failed: %v", err)
	}
	if ok, _ := IsMountPoint(target); ok {
		t.Fatal("still mounted")
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/t\011x\134`: "/t\tx\\", `/end\04`: `/end\04`} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// superOptions returns the tmpfs options the kernel reports for target.
func superOptions(t *testing.T, target string) []string {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range infos {
		if unescape(mi.MountPoint) == target {
			return mi.SuperOptions
		}
	}
	t.Fatalf("%s not in mountinfo", target)
	return nil
}

func TestMountCapsInodesAndNoSwap(t *testing.T) {
	needRoot(t)
	swapMode.Store(swapUnknown)
	t.Cleanup(func() { swapMode.Store(swapUnknown) })
	target := filepath.Join(t.TempDir(), "vol")
	os.Mkdir(target, 0o750)
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if err := Mount(target, Options{SizeBytes: 1 << 20, Mode: 0o750, GID: -1, Inodes: 16, Logger: log}); err != nil {
		t.Fatal(err)
	}
	opts := superOptions(t, target)
	if !slices.Contains(opts, "nr_inodes=16") {
		t.Errorf("mount options %v lack nr_inodes=16", opts)
	}
	noswap, known := NoSwap()
	if !known {
		t.Fatal("NoSwap unknown after a mount")
	}
	// This kernel's answer decides what the mount must show.
	if slices.Contains(opts, "noswap") != noswap {
		t.Errorf("NoSwap() = %v but mount options are %v", noswap, opts)
	}
	if n := strings.Count(logs.String(), "noswap"); n != 1 {
		t.Errorf("want one log line about noswap, got %d: %s", n, logs.String())
	}
	// Files, directories and symlinks all take an inode: the 16th is refused
	// (the root directory has one already).
	created := 0
	var err error
	for i := 0; i < 32; i++ {
		name := filepath.Join(target, strconv.Itoa(i))
		switch i % 3 {
		case 0:
			err = os.WriteFile(name, nil, 0o600)
		case 1:
			err = os.Mkdir(name, 0o700)
		default:
			err = os.Symlink("x", name)
		}
		if err != nil {
			break
		}
		created++
	}
	if !errors.Is(err, unix.ENOSPC) || created != 15 {
		t.Fatalf("created %d entries, then %v; want 15 then ENOSPC", created, err)
	}
}

// An older kernel refuses noswap with EINVAL: the mount is made without it,
// later mounts do not try it again, and the log says so once.
func TestMountWithoutNoSwapOnOldKernels(t *testing.T) {
	needRoot(t)
	swapMode.Store(swapUnknown)
	t.Cleanup(func() { swapMode.Store(swapUnknown); sysMount = unix.Mount })
	tried := 0
	sysMount = func(source, target, fstype string, flags uintptr, data string) error {
		if strings.Contains(data, "noswap") {
			tried++
			return unix.EINVAL
		}
		return unix.Mount(source, target, fstype, flags, data)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for i := range 2 {
		target := filepath.Join(t.TempDir(), "vol")
		os.Mkdir(target, 0o750)
		t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
		if err := Mount(target, Options{SizeBytes: 1 << 16, Mode: 0o750, GID: -1, Logger: log}); err != nil {
			t.Fatalf("mount %d: %v", i, err)
		}
		if slices.Contains(superOptions(t, target), "noswap") {
			t.Fatal("noswap in the options of a fallback mount")
		}
	}
	if noswap, known := NoSwap(); noswap || !known {
		t.Fatalf("NoSwap() = %v, %v; want false, true", noswap, known)
	}
	if tried != 1 {
		t.Errorf("noswap tried %d times, want once", tried)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), "noswap") {
		t.Errorf("want one warning naming noswap, got: %s", logs.String())
	}
	// A mount that fails for another reason does not decide anything.
	swapMode.Store(swapUnknown)
	if err := Mount(filepath.Join(t.TempDir(), "missing"), Options{SizeBytes: 1 << 16, Mode: 0o750, GID: -1}); err == nil {
		t.Fatal("mount on a missing directory succeeded")
	}
	if _, known := NoSwap(); known {
		t.Error("a failed mount decided the noswap question")
	}
}
