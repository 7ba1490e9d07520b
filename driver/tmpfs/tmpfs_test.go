package tmpfs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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
