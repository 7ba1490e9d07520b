package driver

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	"github.com/secretfs/secretfs/provider"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestSanity runs csi-sanity's Identity and Node specs against the driver
// over its real socket. secretfs is node-only, so the mounting specs
// ("should work", "should be idempotent", "should remove target path") get
// their volumes from sanityController below, a test-only controller whose
// volumes carry what kubelet sends for an inline volume of class "app".
//
// Two adaptations, both on the client side, stand in for kubelet:
//   - the volume is published read-only (sanity always sends readonly=false;
//     kubelet sends the pod's readOnly: true, which secretfs requires);
//   - GetPluginCapabilities gains CONTROLLER_SERVICE, because sanity asks the
//     node socket whether a controller exists before using ControllerAddress.
func TestSanity(t *testing.T) {
	e := newEnv(t, nil)
	ctrlSock := filepath.Join(filepath.Dir(e.sock), "controller.sock")
	lis, err := net.Listen("unix", ctrlSock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	csi.RegisterControllerServer(srv, &sanityController{vols: map[string]*csi.Volume{}})
	csi.RegisterIdentityServer(srv, e.d)
	go srv.Serve(lis)
	defer srv.Stop()

	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + e.sock
	cfg.ControllerAddress = "unix://" + ctrlSock
	cfg.TargetPath = filepath.Join(e.dir, "csi-mount")
	cfg.StagingPath = filepath.Join(e.dir, "csi-staging")
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithUnaryInterceptor(asKubelet))

	sanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	suite.SkipStrings = append(suite.SkipStrings, "Controller Server", "GroupController")
	reporter.Succinct = !reporter.Verbose && !reporter.VeryVerbose
	if !ginkgo.RunSpecs(t, "secretfs CSI sanity", suite, reporter) {
		t.Fatal("sanity failed")
	}
	if m := mountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("sanity left mounts %v", m)
	}
	// The mounting specs really published through the provider.
	if e.prov.callCount() == 0 {
		t.Fatal("no volume was published")
	}
}

func asKubelet(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if r, ok := req.(*csi.NodePublishVolumeRequest); ok && r.GetVolumeContext()[provider.AttrEphemeral] == "true" {
		r = proto.Clone(r).(*csi.NodePublishVolumeRequest)
		r.Readonly = true
		req = r
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	if caps, ok := reply.(*csi.GetPluginCapabilitiesResponse); ok && err == nil {
		caps.Capabilities = append(caps.Capabilities, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{
			Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE},
		}})
	}
	return err
}

// sanityController creates "volumes" that are just inline-volume contexts.
type sanityController struct {
	csi.UnimplementedControllerServer
	mu   sync.Mutex
	vols map[string]*csi.Volume
}

func (c *sanityController) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "capabilities missing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.vols[req.GetName()]; ok {
		return &csi.CreateVolumeResponse{Volume: v}, nil
	}
	v := &csi.Volume{
		VolumeId:      "sanity-" + req.GetName(),
		CapacityBytes: req.GetCapacityRange().GetRequiredBytes(),
		VolumeContext: map[string]string{
			provider.AttrClass:          "app",
			provider.AttrEphemeral:      "true",
			provider.AttrPodNamespace:   "team-a",
			provider.AttrPodName:        "sanity",
			provider.AttrPodUID:         "00000000-0000-0000-0000-000000000001",
			provider.AttrServiceAccount: "default",
		},
	}
	c.vols[req.GetName()] = v
	return &csi.CreateVolumeResponse{Volume: v}, nil
}

func (c *sanityController) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id missing")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, v := range c.vols {
		if v.VolumeId == req.GetVolumeId() {
			delete(c.vols, name)
		}
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (c *sanityController) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{
		Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}},
	}}}, nil
}

func (c *sanityController) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}
