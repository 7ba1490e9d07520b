package driver

import (
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkLifecycleFloor makes the system calls of one volume lifecycle of
// the bench class (lifecycleSyscalls: 46) and nothing else, in the same
// order and with the same arguments as the driver, on a target in the same
// directory BenchmarkNodePublishDirect uses: cpu-us/lifecycle is what the
// kernel costs on this machine, the floor under BenchmarkNodePublishDirect
// and the load harness's figures. Run it with TMPDIR on another file system
// to see what the target's mkdir and rmdir cost there.
func BenchmarkLifecycleFloor(b *testing.B) {
	needRoot(b)
	dir := b.TempDir()
	files := []string{"a", "b", "c", "d", "e"}
	content := make([]byte, 56)
	record := make([]byte, 400)
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	cpu0 := processCPU()
	for i := range b.N {
		target := filepath.Join(dir, "t"+strconv.Itoa(i))
		must(unix.Mkdirat(unix.AT_FDCWD, target, 0o750))
		tfd, err := unix.Openat(unix.AT_FDCWD, target, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		must(err)
		fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
		must(err)
		must(unix.FsconfigSetString(fsfd, "source", "secretfs"))
		must(unix.FsconfigSetString(fsfd, "size", "8388608"))
		must(unix.FsconfigSetString(fsfd, "mode", "0750"))
		must(unix.FsconfigSetString(fsfd, "nr_inodes", "5120"))
		must(unix.FsconfigSetFlag(fsfd, "noswap"))
		must(unix.FsconfigCreate(fsfd))
		mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
		must(err)
		must(unix.MoveMount(mfd, "", tfd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH))
		var st unix.Statfs_t
		must(unix.Fstatfs(mfd, &st))
		gen := "..2026_12_07_00_00_00." + strconv.Itoa(i)
		must(unix.Mkdirat(mfd, gen, 0o755))
		gfd, err := unix.Openat(mfd, gen, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		must(err)
		for _, name := range files {
			fd, err := unix.Openat(gfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
			must(err)
			_, err = unix.Write(fd, content)
			must(err)
			must(unix.Close(fd))
		}
		must(unix.Symlinkat(gen, mfd, "..data_tmp"))
		must(unix.Renameat(mfd, "..data_tmp", mfd, "..data"))
		for _, name := range files {
			must(unix.Symlinkat("..data/"+name, mfd, name))
		}
		fd, err := unix.Openat(mfd, recordFile+".tmp", unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		must(err)
		_, err = unix.Write(fd, record)
		must(err)
		must(unix.Close(fd))
		must(unix.Renameat(mfd, recordFile+".tmp", mfd, recordFile))
		for _, fd := range []int{gfd, mfd, fsfd, tfd} {
			must(unix.Close(fd))
		}
		must(unix.Unmount(target, unix.UMOUNT_NOFOLLOW))
		must(unix.Rmdir(target))
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/lifecycle")
}
