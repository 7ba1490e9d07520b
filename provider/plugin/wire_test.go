package plugin

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/secretfs/secretfs/proto/v1alpha1"
	"github.com/secretfs/secretfs/provider"
)

// The field numbers and types below are those of the public
// secrets-store-csi-driver provider/v1alpha1/service.proto. These tests
// build and read messages byte by byte, so they fail if a number or a wire
// type in our .proto drifts.

// upstreamAttributes is what the upstream driver sends for a pod: the class
// parameters with every volume attribute kubelet passed merged in.
const upstreamAttributes = `{"csi.storage.k8s.io/ephemeral":"true",` +
	`"csi.storage.k8s.io/pod.name":"web-0",` +
	`"csi.storage.k8s.io/pod.namespace":"team-a",` +
	`"csi.storage.k8s.io/pod.uid":"0d3a-11",` +
	`"csi.storage.k8s.io/serviceAccount.name":"web",` +
	`"csi.storage.k8s.io/serviceAccount.tokens":"{\"vault\":{\"token\":\"eyJ.a.b\",\"expirationTimestamp\":\"2031-05-06T07:08:09Z\"}}",` +
	`"roleName":"web",` +
	`"secretProviderClass":"db-creds"}`

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// rawMountRequest is a MountRequest as an upstream driver puts it on the wire.
func rawMountRequest() []byte {
	var ov []byte
	ov = appendString(ov, 1, "secret/db") // ObjectVersion.id
	ov = appendString(ov, 2, "6")         // ObjectVersion.version
	var b []byte
	b = appendString(b, 1, upstreamAttributes) // attributes
	b = appendString(b, 2, "null")             // secrets: no nodePublishSecretRef
	b = appendString(b, 3, "/var/lib/kubelet/pods/0d3a-11/volumes/kubernetes.io~csi/creds/mount")
	b = appendString(b, 4, "420") // permission: json.Marshal(os.FileMode(0644))
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	return protowire.AppendBytes(b, ov)
}

// wireFields splits a message into its fields; values are the raw bytes of
// length-delimited fields and the number of varints.
type wireField struct {
	num    protowire.Number
	typ    protowire.Type
	bytes  []byte
	varint uint64
}

func wireFields(t *testing.T, b []byte) []wireField {
	t.Helper()
	var out []wireField
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		f := wireField{num: num, typ: typ}
		switch typ {
		case protowire.BytesType:
			f.bytes, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			f.varint, n = protowire.ConsumeVarint(b)
		default:
			t.Fatalf("field %d has unexpected wire type %v", num, typ)
		}
		if n < 0 {
			t.Fatalf("bad field %d: %v", num, protowire.ParseError(n))
		}
		b = b[n:]
		out = append(out, f)
	}
	return out
}

func TestGeneratedCodeFieldNumbers(t *testing.T) {
	var m pb.MountRequest
	if err := proto.Unmarshal(rawMountRequest(), &m); err != nil {
		t.Fatal(err)
	}
	if m.Attributes != upstreamAttributes || m.Secrets != "null" || m.Permission != "420" ||
		!strings.HasSuffix(m.TargetPath, "/creds/mount") || len(m.CurrentObjectVersion) != 1 ||
		m.CurrentObjectVersion[0].Id != "secret/db" || m.CurrentObjectVersion[0].Version != "6" {
		t.Fatalf("decoded %v", &m)
	}
	if len(m.ProtoReflect().GetUnknown()) != 0 {
		t.Fatal("fields left unknown: a field number differs from upstream")
	}

	resp, err := proto.Marshal(&pb.MountResponse{
		ObjectVersion: []*pb.ObjectVersion{{Id: "i", Version: "v"}},
		Error:         &pb.Error{Code: "c"},
		Files:         []*pb.File{{Path: "p", Mode: 420, Contents: []byte{0, 1}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	fs := wireFields(t, resp)
	if len(fs) != 3 || fs[0].num != 1 || fs[1].num != 2 || fs[2].num != 3 {
		t.Fatalf("MountResponse fields %+v, want object_version=1 error=2 files=3", fs)
	}
	if e := wireFields(t, fs[1].bytes); len(e) != 1 || e[0].num != 1 || string(e[0].bytes) != "c" {
		t.Errorf("Error fields %+v, want code=1", e)
	}
	checkFile(t, fs[2].bytes, "p", 420, []byte{0, 1})

	ver, _ := proto.Marshal(&pb.VersionResponse{Version: "a", RuntimeName: "b", RuntimeVersion: "c"})
	vf := wireFields(t, ver)
	if len(vf) != 3 || string(vf[0].bytes) != "a" || vf[1].num != 2 || string(vf[1].bytes) != "b" || vf[2].num != 3 {
		t.Errorf("VersionResponse fields %+v, want version=1 runtime_name=2 runtime_version=3", vf)
	}
	if f := pb.File_v1alpha1_service_proto.Services().Get(0); f.FullName() != "v1alpha1.CSIDriverProvider" {
		t.Errorf("service is %s", f.FullName())
	}
}

func checkFile(t *testing.T, b []byte, path string, mode uint64, contents []byte) {
	t.Helper()
	got := map[protowire.Number]wireField{}
	for _, f := range wireFields(t, b) {
		got[f.num] = f
	}
	if string(got[1].bytes) != path || got[1].typ != protowire.BytesType {
		t.Errorf("File.path (1): %+v", got[1])
	}
	if got[2].typ != protowire.VarintType || got[2].varint != mode {
		t.Errorf("File.mode (2, varint): %+v, want %d", got[2], mode)
	}
	if string(got[3].bytes) != string(contents) || got[3].typ != protowire.BytesType {
		t.Errorf("File.contents (3): %+v", got[3])
	}
}

// rawCodec sends and receives bytes as they are, so the test controls the
// wire format completely.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// TestUpstreamDriverRequest speaks to our server as the upstream driver
// does, with hand-built bytes on the upstream method names.
func TestUpstreamDriverRequest(t *testing.T) {
	dir := t.TempDir()
	var got *provider.Request
	p := &funcProvider{fetch: func(_ context.Context, req *provider.Request) (*provider.Result, error) {
		got = req
		return &provider.Result{Files: []provider.File{
			{Path: "password", Mode: 0o400, Contents: []byte("pw")},
			{Path: "cert.der", Contents: []byte{0x30, 0x82, 0x00, 0xff}},
		}}, nil
	}}
	path := sockPath(dir, "secretfs")
	serve(t, path, p, WithRuntime("secretfs-fake", "1.0.0"))

	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	req, resp := rawMountRequest(), []byte(nil)
	if err := cc.Invoke(ctx, "/v1alpha1.CSIDriverProvider/Mount", &req, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
		t.Fatal(err)
	}

	want := &provider.Request{
		Pod:   provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0d3a-11", ServiceAccount: "web"},
		Class: "db-creds",
		Tokens: map[string]provider.Token{"vault": {Token: "eyJ.a.b",
			ExpirationTimestamp: time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)}},
		Parameters:      map[string]string{"roleName": "web"},
		TargetPath:      "/var/lib/kubelet/pods/0d3a-11/volumes/kubernetes.io~csi/creds/mount",
		DefaultMode:     0o644,
		CurrentVersions: []provider.ObjectVersion{{ID: "secret/db", Version: "6"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("backend got\n%+v\nwant\n%+v", got, want)
	}

	fs := wireFields(t, resp)
	var versions, files [][]byte
	for _, f := range fs {
		switch f.num {
		case 1:
			versions = append(versions, f.bytes)
		case 3:
			files = append(files, f.bytes)
		default:
			t.Errorf("unexpected MountResponse field %d", f.num)
		}
	}
	if len(files) != 2 {
		t.Fatalf("%d files", len(files))
	}
	checkFile(t, files[0], "password", 0o400, []byte("pw"))
	checkFile(t, files[1], "cert.der", 0o644, []byte{0x30, 0x82, 0x00, 0xff})
	// Upstream drivers refuse a response without object versions; a backend
	// without versions gets one per file.
	if len(versions) != 2 {
		t.Fatalf("%d object versions, want 2", len(versions))
	}
	if v := wireFields(t, versions[0]); len(v) != 1 || v[0].num != 1 || string(v[0].bytes) != "password" {
		t.Errorf("object version %+v", v)
	}

	vreq := appendString(nil, 1, "v1alpha1")
	var vresp []byte
	if err := cc.Invoke(ctx, "/v1alpha1.CSIDriverProvider/Version", &vreq, &vresp, grpc.ForceCodec(rawCodec{})); err != nil {
		t.Fatal(err)
	}
	vf := wireFields(t, vresp)
	if len(vf) != 3 || string(vf[0].bytes) != "v1alpha1" || string(vf[1].bytes) != "secretfs-fake" || string(vf[2].bytes) != "1.0.0" {
		t.Errorf("Version response %+v", vf)
	}

	// The generated client reaches the same server, and errors carry codes.
	api := pb.NewCSIDriverProviderClient(cc)
	_, err = api.Mount(ctx, &pb.MountRequest{Attributes: "{", Permission: "420"})
	wantCode(t, err, codes.InvalidArgument)
}

// TestClientRequestMatchesUpstream checks the JSON our client sends against
// what the upstream driver sends for the same pod.
func TestClientRequestMatchesUpstream(t *testing.T) {
	m, err := encodeMountRequest(&provider.Request{
		Pod:        provider.Pod{Namespace: "team-a", Name: "web-0", UID: "0d3a-11", ServiceAccount: "web"},
		Class:      "db-creds",
		Tokens:     map[string]provider.Token{"vault": {Token: "eyJ.a.b", ExpirationTimestamp: time.Date(2031, 5, 6, 9, 8, 9, 0, time.FixedZone("CEST", 2*3600))}},
		Parameters: map[string]string{"roleName": "web"},
		TargetPath: "/t",
	})
	if err != nil {
		t.Fatal(err)
	}
	// Ours lacks only csi.storage.k8s.io/ephemeral, which the request does not
	// carry and no provider reads.
	want := strings.Replace(upstreamAttributes, `"csi.storage.k8s.io/ephemeral":"true",`, "", 1)
	if m.Attributes != want {
		t.Errorf("attributes\n%s\nwant\n%s", m.Attributes, want)
	}
	if m.Secrets != "null" || m.Permission != "420" || m.TargetPath != "/t" {
		t.Errorf("secrets %q permission %q target %q", m.Secrets, m.Permission, m.TargetPath)
	}
}

func TestDecodeMountRequestRejects(t *testing.T) {
	const secret = "hunter2-s3cr3t"
	for name, m := range map[string]*pb.MountRequest{
		"no attributes":       {Permission: "420"},
		"attributes not JSON": {Attributes: `{"a":` + secret},
		"attribute number":    {Attributes: `{"a":12345678}`},
		"secrets not strings": {Attributes: `{}`, Secrets: `{"password":` + "1" + strings.Repeat("7", 10) + `}`},
		"secrets not JSON":    {Attributes: `{}`, Secrets: `{"password":"` + secret},
		"tokens not JSON":     {Attributes: `{"csi.storage.k8s.io/serviceAccount.tokens":"{\"a\":{\"token\":` + secret + `"}`},
		"token bad time":      {Attributes: `{"csi.storage.k8s.io/serviceAccount.tokens":"{\"a\":{\"token\":\"t\",\"expirationTimestamp\":\"` + secret + `\"}}"}`},
		"permission text":     {Attributes: `{}`, Permission: `"0644"`},
		"permission negative": {Attributes: `{}`, Permission: `-1`},
		"permission too big":  {Attributes: `{}`, Permission: `4096`},
		"permission fraction": {Attributes: `{}`, Permission: `420.5`},
	} {
		_, err := decodeMountRequest(m)
		if provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%s: want InvalidArgument, got %v", name, err)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "1777") || strings.Contains(err.Error(), "12345678") {
			t.Errorf("%s: error quotes the input: %v", name, err)
		}
	}
	// Empty secrets and permission take the defaults.
	req, err := decodeMountRequest(&pb.MountRequest{Attributes: `{}`})
	if err != nil || req.DefaultMode != provider.DefaultFileMode || req.Secrets != nil {
		t.Errorf("defaults: %+v %v", req, err)
	}
	// A default mode of 0 would make every file unreadable: it means the default.
	if req, err := decodeMountRequest(&pb.MountRequest{Attributes: `{}`, Permission: "0"}); err != nil || req.DefaultMode != provider.DefaultFileMode {
		t.Errorf("mode 0: %+v %v", req, err)
	}
}

// FuzzDecodeMountRequest feeds the JSON fields of a MountRequest to the
// server's decoder: it must never panic, must fail only with
// InvalidArgument, must never quote the marker (a stand-in secret) in an
// error, and what it accepts must survive our client's encoding unchanged.
func FuzzDecodeMountRequest(f *testing.F) {
	const marker = "MARKERSECRET"
	f.Add(upstreamAttributes, "null", "420")
	f.Add(`{"objects":"array:\n  - |\n    objectName: a\n","secretProviderClass":"c"}`, `{"clientsecret":"`+marker+`"}`, "292")
	f.Add(`{"csi.storage.k8s.io/serviceAccount.tokens":"{\"aud\":{\"token\":\"`+marker+`\",\"expirationTimestamp\":null}}"}`, "", "")
	f.Add(`{"csi.storage.k8s.io/serviceAccount.tokens":"{\"aud\":{\"token\":1}}"}`, "{}", "511")
	f.Add(`{"a":"`+marker, `{"k":`+marker+`}`, marker)
	f.Add("null", "[]", "1e2")
	f.Add(`{"a":"\u00e9\ud800"}`, `{"":""}`, " 420 ")
	f.Fuzz(func(t *testing.T, attributes, secrets, permission string) {
		m := &pb.MountRequest{Attributes: attributes, Secrets: secrets, Permission: permission, TargetPath: "/t"}
		req, err := decodeMountRequest(m)
		if err != nil {
			if provider.CodeOf(err) != codes.InvalidArgument {
				t.Fatalf("code %v: %v", provider.CodeOf(err), err)
			}
			if strings.Contains(err.Error(), marker) {
				t.Fatalf("error quotes the input: %v", err)
			}
			return
		}
		if req.DefaultMode&^0o777 != 0 {
			t.Fatalf("mode %o accepted", req.DefaultMode)
		}
		// decode(encode(r)) is a fixed point after one normalization
		// (token times to seconds, empty pod fields dropped).
		m2, err := encodeMountRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := decodeMountRequest(m2)
		if err != nil {
			t.Fatalf("our own encoding rejected: %v\n%s", err, m2.Attributes)
		}
		m3, _ := encodeMountRequest(r2)
		if !proto.Equal(m2, m3) {
			t.Fatalf("not stable:\n%v\n%v", m2, m3)
		}
		if r2.Pod != req.Pod || r2.Class != req.Class || !reflect.DeepEqual(r2.Parameters, req.Parameters) ||
			r2.DefaultMode != req.DefaultMode || len(r2.Tokens) != len(req.Tokens) {
			t.Fatalf("round trip changed the request:\n%+v\n%+v", req, r2)
		}
	})
}
