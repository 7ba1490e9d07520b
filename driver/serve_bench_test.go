package driver

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/secretfs/secretfs/provider"
)

// BenchmarkKubeletProbe is one of kubelet's capability probes as kubelet
// makes it (pkg/volume/csi/csi_client.go): a new connection, one
// NodeGetCapabilities, close. Sub-benchmarks compare gRPC's default server
// with serverOptions, and the driver with "floor": a gRPC server holding
// nothing but a NodeGetCapabilities that returns a prebuilt answer, which
// is what any grpc-go server pays per connection. Client and server share
// the process, so allocs/op and ns/op count both sides; the differences
// are the server's.
func BenchmarkKubeletProbe(b *testing.B) {
	d, err := New(Config{NodeID: "n", Classes: mapClasses{}, Providers: func(string) (provider.Provider, error) { return nil, nil }})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		node csi.NodeServer
		opts []grpc.ServerOption
	}{{"default", d, nil}, {"serverOptions", d, serverOptions()}, {"floor", floorNode{}, serverOptions()}} {
		b.Run(bc.name, func(b *testing.B) {
			dir, err := os.MkdirTemp("", "sfsb")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
			sock := filepath.Join(dir, "csi.sock")
			l, err := net.Listen("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			srv := grpc.NewServer(bc.opts...)
			csi.RegisterNodeServer(srv, bc.node)
			go srv.Serve(l)
			defer srv.Stop()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				conn, err := grpc.NewClient("passthrough:///"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
						return (&net.Dialer{}).DialContext(ctx, "unix", addr)
					}))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := csi.NewNodeClient(conn).NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{}); err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}

// floorNode answers NodeGetCapabilities with a prebuilt response and
// nothing else: the least a CSI node server can do per probe.
type floorNode struct{ csi.UnimplementedNodeServer }

var floorCaps = &csi.NodeGetCapabilitiesResponse{}

func (floorNode) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return floorCaps, nil
}
