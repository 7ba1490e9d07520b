// Package fakeprovider is a protocol-level fake of an external provider of
// the Secrets Store CSI Driver, for tests. It answers Mount the way the AWS
// provider (github.com/aws/secrets-store-csi-driver-provider-aws, server
// package) does:
//
//   - parameter "objects" is a YAML list of {objectName, objectType,
//     objectAlias, filePermission}; the file name is objectAlias, or
//     objectName with '/' translated to '_' (parameter pathTranslation, "_"
//     by default);
//   - by default (the AWS provider's driverWritesSecrets=false) it writes
//     each file into the request's target path itself: a temporary file
//     created in the target, chmod to the request's permission (or the
//     object's filePermission), written, synced and renamed over the file
//     name, and answers with no files, only object versions;
//   - with DriverWrites it returns the files instead (gRPC mode).
//
// Values come from Values (its "Secrets Manager"). An object of objectType
// "dynamic" gets a fresh random value on every Mount, as dynamic database
// credentials or per-pod certificates do. Every Mount is recorded, with
// whether the target was a tmpfs at the time of the call.
package fakeprovider

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"sigs.k8s.io/yaml"

	pb "github.com/secretfs/secretfs/proto/v1alpha1"
)

// Mount is what the fake saw of one Mount call.
type Mount struct {
	TargetPath string
	// TargetWasTmpfs: statfs said tmpfs when the call arrived.
	TargetWasTmpfs bool
	Attributes     map[string]string
	Versions       []*pb.ObjectVersion // CurrentObjectVersion of the request
}

// Server is the fake provider. Set its fields before serving.
type Server struct {
	pb.UnimplementedCSIDriverProviderServer

	// DriverWrites returns the files in the response instead of writing them.
	DriverWrites bool
	// Values looks an object up by name; nil or false means not found.
	Values func(name string) ([]byte, bool)

	mu     sync.Mutex
	mounts []Mount
}

type object struct {
	ObjectName     string `json:"objectName"`
	ObjectType     string `json:"objectType"`
	ObjectAlias    string `json:"objectAlias"`
	FilePermission string `json:"filePermission"`
}

// Mounts returns the Mount calls seen so far.
func (s *Server) Mounts() []Mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Mount(nil), s.mounts...)
}

// Version answers like the AWS provider.
func (s *Server) Version(context.Context, *pb.VersionRequest) (*pb.VersionResponse, error) {
	return &pb.VersionResponse{Version: "v1alpha1", RuntimeName: "fakeprovider", RuntimeVersion: "0.0.1"}, nil
}

// Mount fetches every object first and writes (or returns) them after.
func (s *Server) Mount(_ context.Context, req *pb.MountRequest) (*pb.MountResponse, error) {
	target := req.GetTargetPath()
	if target == "" {
		//lint:ignore ST1005 the upstream providers' message, verbatim
		return nil, fmt.Errorf("Missing mount path")
	}
	var attrs map[string]string
	if err := json.Unmarshal([]byte(req.GetAttributes()), &attrs); err != nil {
		return nil, fmt.Errorf("failed to unmarshal attributes, error: %v", err)
	}
	var st unix.Statfs_t
	wasTmpfs := unix.Statfs(target, &st) == nil && st.Type == unix.TMPFS_MAGIC
	s.mu.Lock()
	s.mounts = append(s.mounts, Mount{TargetPath: target, TargetWasTmpfs: wasTmpfs, Attributes: attrs, Versions: req.GetCurrentObjectVersion()})
	s.mu.Unlock()

	var perm os.FileMode
	if err := json.Unmarshal([]byte(req.GetPermission()), &perm); err != nil {
		return nil, fmt.Errorf("failed to unmarshal file permission, error: %v", err)
	}
	var objs []object
	if err := yaml.Unmarshal([]byte(attrs["objects"]), &objs); err != nil {
		return nil, fmt.Errorf("failed to parse objects: %v", err)
	}
	translate := "_"
	if t, ok := attrs["pathTranslation"]; ok {
		translate = t
	}
	type fetched struct {
		name    string
		mode    os.FileMode
		value   []byte
		version string
	}
	var all []fetched
	for _, o := range objs {
		var value []byte
		if o.ObjectType == "dynamic" {
			b := make([]byte, 16)
			rand.Read(b)
			value = []byte(o.ObjectName + "-" + hex.EncodeToString(b))
		} else {
			v, ok := s.lookup(o.ObjectName)
			if !ok {
				//lint:ignore ST1005 the upstream providers' message, verbatim
				return nil, fmt.Errorf("Failed to fetch secret %s: ResourceNotFoundException", o.ObjectName)
			}
			value = v
		}
		name := o.ObjectAlias
		if name == "" {
			name = o.ObjectName
			if translate != "False" {
				name = strings.ReplaceAll(name, "/", translate)
			}
		}
		mode := perm
		if o.FilePermission != "" {
			m, err := strconv.ParseUint(o.FilePermission, 8, 32)
			if err != nil {
				return nil, fmt.Errorf("invalid filePermission %q", o.FilePermission)
			}
			mode = os.FileMode(m)
		}
		sum := sha256.Sum256(value)
		all = append(all, fetched{name, mode, value, hex.EncodeToString(sum[:8])})
	}
	resp := &pb.MountResponse{}
	for _, f := range all {
		if s.DriverWrites {
			resp.Files = append(resp.Files, &pb.File{Path: f.name, Mode: int32(f.mode), Contents: f.value})
		} else if err := writeFile(target, f.name, f.mode, f.value); err != nil {
			return nil, err
		}
		resp.ObjectVersion = append(resp.ObjectVersion, &pb.ObjectVersion{Id: f.name, Version: f.version})
	}
	return resp, nil
}

func (s *Server) lookup(name string) ([]byte, bool) {
	if s.Values == nil {
		return nil, false
	}
	return s.Values(name)
}

// writeFile is the AWS provider's writeFile: temp file in the mount
// directory, chmod, write, sync, rename over the file name.
func writeFile(dir, name string, mode os.FileMode, value []byte) error {
	tmp, err := os.CreateTemp(dir, name)
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err := tmp.Write(value); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

// DirValues reads values from files in dir, one per object name (the
// e2e tests' data directory).
func DirValues(dir string) func(string) ([]byte, bool) {
	return func(name string) ([]byte, bool) {
		if strings.Contains(name, "/") || strings.HasPrefix(name, ".") {
			return nil, false
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		return b, err == nil
	}
}

// Serve serves s on the unix socket path until ctx is done.
func Serve(ctx context.Context, path string, s *Server) error {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	pb.RegisterCSIDriverProviderServer(srv, s)
	go func() { <-ctx.Done(); srv.Stop() }()
	if err := srv.Serve(l); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
