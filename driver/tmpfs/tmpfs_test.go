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

	"github.com/secretfs/secretfs/test/ci"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		ci.Missing(t, "tmpfs tests need root")
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
	t.Cleanup(func() { swapMode.Store(swapUnknown); mountFd = newAPIMount })
	tried := 0
	mountFd = func(dirfd int, opts Options, noswap bool) (int, error) {
		if noswap {
			tried++
			return -1, unix.EINVAL
		}
		return newAPIMount(dirfd, opts, false)
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

// Mount never follows a symlink at the target: the directory it points to
// stays as it is.
func TestMountRefusesSymlinkTarget(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.Mkdir(victim, 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(victim, link)
	t.Cleanup(func() { unix.Unmount(victim, unix.MNT_DETACH) })
	if err := Mount(link, Options{SizeBytes: 1 << 16, Mode: 0o700, GID: -1}); err == nil {
		t.Fatal("mounted through a symlink")
	}
	if m, _ := IsMountPoint(victim); m {
		t.Fatal("the symlink's target was mounted over")
	}
}

// Both ways of attaching (the new mount API and mount(2) on /proc/self/fd/N)
// mount onto the held directory with the driver's options and flags, give
// back the new mount's root, and DetachFd removes the mount wherever it is.
func TestMountAtAndDetachFd(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name  string
		mount func(int, Options, bool) (int, error)
	}{{"fsmount", newAPIMount}, {"mount(2)", legacyMount}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { mountFd = newAPIMount })
			mountFd = tc.mount
			dir := t.TempDir()
			target := filepath.Join(dir, "vol")
			os.Mkdir(target, 0o750)
			t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
			dirfd, err := unix.Open(target, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(dirfd)
			mfd, err := MountAt(dirfd, Options{SizeBytes: 1 << 20, Mode: 0o710, GID: 1234, UID: 4321, Inodes: 64})
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(mfd)
			if err := VerifyFd(mfd, "mfd"); err != nil {
				t.Fatal(err)
			}
			if !IsSecretfs(target) {
				t.Fatal("target is not a secretfs tmpfs")
			}
			var st unix.Stat_t
			if err := unix.Stat(target, &st); err != nil || st.Mode&0o7777 != 0o710 || st.Uid != 4321 || st.Gid != 1234 {
				t.Fatalf("root %o %d:%d (%v)", st.Mode&0o7777, st.Uid, st.Gid, err)
			}
			opts := superOptions(t, target)
			for _, want := range []string{"size=1024k", "nr_inodes=64", "mode=710", "uid=4321", "gid=1234"} {
				if !slices.Contains(opts, want) {
					t.Errorf("super options %v lack %s", opts, want)
				}
			}
			infos, _ := mount.ParseMountInfo("/proc/self/mountinfo")
			for _, mi := range infos {
				if unescape(mi.MountPoint) == target {
					for _, f := range []string{"nosuid", "nodev", "noexec"} {
						if !slices.Contains(mi.MountOptions, f) {
							t.Errorf("mount options %v lack %s", mi.MountOptions, f)
						}
					}
				}
			}
			// The directory is renamed: DetachFd still finds the mount.
			moved := filepath.Join(dir, "moved")
			if err := os.Rename(dir+"/vol", moved); err == nil {
				t.Log("renamed a mount point") // EBUSY is the usual answer
				target = moved
			}
			if err := DetachFd(mfd); err != nil {
				t.Fatal(err)
			}
			if m, _ := IsMountPoint(target); m {
				t.Fatal("still mounted after DetachFd")
			}
			if err := DetachFd(mfd); err != nil {
				t.Fatalf("second DetachFd: %v", err)
			}
		})
	}
}

// BenchmarkMountUnmount is one volume's mount (Mount: open, attach, statfs)
// and unmount (Unmount): the cost of mounting onto a descriptor.
func BenchmarkMountUnmount(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	dir := b.TempDir()
	for b.Loop() {
		target := filepath.Join(dir, "vol")
		os.Mkdir(target, 0o750)
		if err := Mount(target, Options{SizeBytes: 1 << 20, Mode: 0o750, GID: 1234, Inodes: 64}); err != nil {
			b.Fatal(err)
		}
		if err := Unmount(target); err != nil {
			b.Fatal(err)
		}
	}
}
