// Command floor is the least a CSI node plugin can do for the load harness
// (test/bench): a grpc-go server with the driver's server options whose
// NodePublishVolume makes the system calls of the driver's lifecycle
// (driver.BenchmarkLifecycleFloor: the target, the tmpfs with its options,
// five files, the links and the ..data swap, a metadata file) and nothing
// else: no class, no backend, no budget, no metrics. Run in the driver's
// place, the harness's CPU per lifecycle is the floor of the transport and
// the kernel under the same call pattern:
//
//	go build -o /tmp/floor ./test/bench/floor
//	go run ./test/bench -secretfs /tmp/floor -pattern shared -cache on -volumes 2000 -concurrency 1 -latency 0
//
// It takes the driver's command line (`driver --endpoint unix://... ...`),
// uses --endpoint, --metrics-addr and --max-procs, and ignores the rest.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "driver" {
		fmt.Fprintln(os.Stderr, "usage: floor driver --endpoint unix:///path [--metrics-addr host:port] [--max-procs n] [driver flags, ignored]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("floor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoint := fs.String("endpoint", "", "")
	metricsAddr := fs.String("metrics-addr", "", "")
	maxProcs := fs.Int("max-procs", 1, "")
	// The driver's other flags: a value each unless it is a bool.
	args := os.Args[2:]
	var keep []string
	for i := 0; i < len(args); i++ {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		switch name {
		case "endpoint", "metrics-addr", "max-procs":
			keep = append(keep, args[i])
			if !hasValue && i+1 < len(args) {
				keep = append(keep, args[i+1])
				i++
			}
		default:
			if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
			}
		}
	}
	if err := fs.Parse(keep); err != nil || *endpoint == "" {
		fmt.Fprintln(os.Stderr, "floor: --endpoint unix:///path is required")
		os.Exit(2)
	}
	if *maxProcs > 0 {
		runtime.GOMAXPROCS(*maxProcs)
	}
	if err := run(strings.TrimPrefix(*endpoint, "unix://"), *metricsAddr); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(sock, metricsAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	// The driver's server options (driver/server.go serverOptions).
	srv := grpc.NewServer(grpc.InitialWindowSize(64<<10), grpc.InitialConnWindowSize(64<<10), grpc.NumStreamWorkers(4))
	csi.RegisterIdentityServer(srv, identity{})
	csi.RegisterNodeServer(srv, &node{})
	if metricsAddr != "" {
		ml, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return err
		}
		// The harness reads the address from the driver's JSON log.
		line, _ := json.Marshal(map[string]string{"msg": "serving HTTP", "addr": ml.Addr().String()})
		fmt.Fprintln(os.Stderr, string(line))
		go http.Serve(ml, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	}
	go func() { <-ctx.Done(); srv.Stop() }()
	if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

type identity struct {
	csi.UnimplementedIdentityServer
}

func (identity) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

type node struct {
	csi.UnimplementedNodeServer
	generation atomic.Int64
}

func (*node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

var (
	files   = []string{"a", "b", "c", "d", "e"}
	content = make([]byte, 64)
	record  = make([]byte, 400)
)

// NodePublishVolume mounts a tmpfs at the target and writes the files, or,
// on a republish (the target is a mount), writes a new generation.
func (n *node) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	err := unix.Mkdirat(unix.AT_FDCWD, target, 0o750)
	switch {
	case errors.Is(err, unix.EEXIST):
		fd, err := unix.Openat(unix.AT_FDCWD, target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		defer unix.Close(fd)
		return &csi.NodePublishVolumeResponse{}, n.write(fd)
	case err != nil:
		return nil, err
	}
	tfd, err := unix.Openat(unix.AT_FDCWD, target, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(tfd)
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fsfd)
	for _, kv := range [][2]string{{"source", "secretfs"}, {"size", "8388608"}, {"mode", "0750"}, {"nr_inodes", "5120"}} {
		if err := unix.FsconfigSetString(fsfd, kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	if err := unix.FsconfigSetFlag(fsfd, "noswap"); err != nil {
		return nil, err
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, err
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", tfd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return nil, err
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(mfd, &st); err != nil {
		return nil, err
	}
	if err := n.write(mfd); err != nil {
		return nil, err
	}
	for _, name := range files {
		if err := unix.Symlinkat("..data/"+name, mfd, name); err != nil {
			return nil, err
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// write writes a generation of the files into the tmpfs root, swaps
// ..data to it, and replaces the metadata file.
func (n *node) write(root int) error {
	gen := "..gen." + strconv.FormatInt(n.generation.Add(1), 10)
	if err := unix.Mkdirat(root, gen, 0o755); err != nil {
		return err
	}
	gfd, err := unix.Openat(root, gen, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(gfd)
	for _, name := range files {
		if err := writeFile(gfd, name, content, unix.O_EXCL, 0o644); err != nil {
			return err
		}
	}
	unix.Unlinkat(root, "..data_tmp", 0)
	if err := unix.Symlinkat(gen, root, "..data_tmp"); err != nil {
		return err
	}
	if err := unix.Renameat(root, "..data_tmp", root, "..data"); err != nil {
		return err
	}
	if err := writeFile(root, "..secretfs.json.tmp", record, unix.O_TRUNC, 0o600); err != nil {
		return err
	}
	return unix.Renameat(root, "..secretfs.json.tmp", root, "..secretfs.json")
}

func writeFile(dir int, name string, data []byte, flag int, mode uint32) error {
	fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|flag, mode)
	if err != nil {
		return err
	}
	_, err = unix.Write(fd, data)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

// NodeUnpublishVolume unmounts the target and removes it.
func (*node) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return nil, err
	}
	if err := unix.Rmdir(target); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
