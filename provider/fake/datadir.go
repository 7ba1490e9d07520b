package fake

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// maxDataFile bounds one override file, like a Kubernetes Secret (1 MiB).
const maxDataFile = 1 << 20

// nsDir is an open <dataDir>/<namespace> directory, or none when the data
// directory is unset or has no directory for the namespace.
type nsDir struct {
	fd int // -1 when there is nothing to read
	ns string
}

// openNamespace opens <dataDir>/<namespace> without following a symlink at
// the namespace component. ns must already be a valid DNS label, so it is a
// single path component and cannot be "." or "..".
func openNamespace(dataDir, ns string) (nsDir, error) {
	d := nsDir{fd: -1, ns: ns}
	if dataDir == "" {
		return d, nil
	}
	root, err := unix.Open(dataDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return d, nil
	}
	if err != nil {
		return d, provider.Unavailable("fake backend: cannot open the data directory: %v", err)
	}
	defer unix.Close(root)
	fd, err := unix.Openat(root, ns, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return d, nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return d, provider.Errorf(codes.FailedPrecondition, "fake backend: data directory entry %s is not a directory (symbolic links are not followed)", ns)
	case err != nil:
		return d, provider.Unavailable("fake backend: cannot open data directory %s: %v", ns, err)
	}
	d.fd = fd
	return d, nil
}

func (d nsDir) close() {
	if d.fd >= 0 {
		unix.Close(d.fd)
	}
}

// read returns the override for objectName, or ok=false when there is none.
// objectName is a validated safe name: one component, never "." or "..".
// Symbolic links, devices and FIFOs are refused rather than followed. The
// file's size is charged to budget before it is read.
func (d nsDir) read(objectName string, budget *provider.Budget) (data []byte, ok bool, err error) {
	if d.fd < 0 {
		return nil, false, nil
	}
	fd, err := unix.Openat(d.fd, objectName, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, false, nil
	case errors.Is(err, unix.ELOOP):
		return nil, false, provider.Errorf(codes.FailedPrecondition, "fake backend: data file %s/%s is a symbolic link; it is not followed", d.ns, objectName)
	case err != nil:
		return nil, false, provider.Unavailable("fake backend: cannot open data file %s/%s: %v", d.ns, objectName, err)
	}
	f := os.NewFile(uintptr(fd), objectName)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, false, provider.Unavailable("fake backend: cannot stat data file %s/%s: %v", d.ns, objectName, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, false, provider.Errorf(codes.FailedPrecondition, "fake backend: data file %s/%s is not a regular file", d.ns, objectName)
	}
	if st.Size > maxDataFile {
		return nil, false, provider.Errorf(codes.FailedPrecondition, "fake backend: data file %s/%s is larger than %d bytes", d.ns, objectName, maxDataFile)
	}
	if err := chargeAnswer(budget, st.Size); err != nil {
		return nil, false, err
	}
	data, err = io.ReadAll(io.LimitReader(f, st.Size+1))
	if err != nil {
		return nil, false, provider.Unavailable("fake backend: cannot read data file %s/%s: %v", d.ns, objectName, err)
	}
	if int64(len(data)) > st.Size { // grew after fstat
		return nil, false, provider.Unavailable("fake backend: data file %s/%s grew while it was read; retry", d.ns, objectName)
	}
	return data, true, nil
}
