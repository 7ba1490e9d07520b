// Package plugin speaks the Secrets Store CSI provider protocol (v1alpha1,
// see proto/) in both directions: Client reaches external providers over
// <dir>/<name>.sock, and Serve offers any provider.Provider on a unix socket.
//
// This file maps provider.Request to and from a MountRequest the way the
// upstream Secrets Store CSI driver encodes it, so that existing providers
// (Vault, AWS, GCP, Azure) and existing drivers understand us unchanged.
package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/codes"

	pb "github.com/secretfs/secretfs/proto/v1alpha1"
	"github.com/secretfs/secretfs/provider"
)

// The attributes of a MountRequest are the class parameters plus the
// kubelet keys and the class name (provider.Attr*), as upstream drivers send them.

// protocolVersion is what both sides put in Version requests and responses.
const protocolVersion = "v1alpha1"

// encodeMountRequest builds the request an upstream driver would send: the
// attributes are the class parameters plus the pod's volume attributes, the
// secrets and the default mode are JSON, as json.Marshal writes them.
func encodeMountRequest(req *provider.Request) (*pb.MountRequest, error) {
	attrs := make(map[string]string, len(req.Parameters)+6)
	for k, v := range req.Parameters {
		// Pod identity and tokens come from kubelet only, never from a class.
		if isReservedAttribute(k) {
			continue
		}
		attrs[k] = v
	}
	setIf(attrs, provider.AttrClass, req.Class)
	setIf(attrs, provider.AttrPodName, req.Pod.Name)
	setIf(attrs, provider.AttrPodNamespace, req.Pod.Namespace)
	setIf(attrs, provider.AttrPodUID, req.Pod.UID)
	setIf(attrs, provider.AttrServiceAccount, req.Pod.ServiceAccount)
	if len(req.Tokens) > 0 {
		js, err := provider.EncodeTokens(req.Tokens)
		if err != nil {
			return nil, err
		}
		attrs[provider.AttrTokens] = js
	}
	attributes, err := json.Marshal(attrs)
	if err != nil {
		return nil, provider.Errorf(codes.Internal, "encoding attributes: %v", err)
	}
	// A nil map encodes as null, as upstream sends when there is no
	// nodePublishSecretRef.
	secrets, err := json.Marshal(req.Secrets)
	if err != nil {
		return nil, provider.Errorf(codes.Internal, "encoding secrets failed")
	}
	mode := req.DefaultMode
	if mode == 0 {
		mode = provider.DefaultFileMode
	}
	permission, _ := json.Marshal(mode) // a number: 420 for 0644
	m := &pb.MountRequest{
		Attributes: string(attributes),
		Secrets:    string(secrets),
		TargetPath: req.TargetPath,
		Permission: string(permission),
	}
	for _, v := range req.CurrentVersions {
		m.CurrentObjectVersion = append(m.CurrentObjectVersion, &pb.ObjectVersion{Id: v.ID, Version: v.Version})
	}
	return m, nil
}

// decodeMountRequest is the server side of encodeMountRequest. It accepts
// what upstream drivers send, including volume attributes it has no use
// for (csi.storage.k8s.io/ephemeral). Errors are InvalidArgument and never
// quote the input: attributes carry tokens and secrets carry secrets.
func decodeMountRequest(m *pb.MountRequest) (*provider.Request, error) {
	if strings.TrimSpace(m.GetAttributes()) == "" {
		return nil, provider.InvalidArgument("mount request has no attributes: expected a JSON object of strings with the class parameters and the pod's volume attributes")
	}
	var attrs map[string]string
	if err := json.Unmarshal([]byte(m.GetAttributes()), &attrs); err != nil {
		return nil, provider.InvalidArgument("mount request attributes are not a JSON object of strings: %s", describeJSONError(err))
	}
	var secrets map[string]string
	if s := strings.TrimSpace(m.GetSecrets()); s != "" {
		if err := json.Unmarshal([]byte(s), &secrets); err != nil {
			return nil, provider.InvalidArgument("mount request secrets are not a JSON object of strings: %s", describeJSONError(err))
		}
	}
	mode, err := decodePermission(m.GetPermission())
	if err != nil {
		return nil, err
	}
	req := &provider.Request{
		Pod: provider.Pod{
			Namespace:      attrs[provider.AttrPodNamespace],
			Name:           attrs[provider.AttrPodName],
			UID:            attrs[provider.AttrPodUID],
			ServiceAccount: attrs[provider.AttrServiceAccount],
		},
		Class:       attrs[provider.AttrClass],
		Secrets:     secrets,
		TargetPath:  m.GetTargetPath(),
		DefaultMode: mode,
	}
	if raw := strings.TrimSpace(attrs[provider.AttrTokens]); raw != "" {
		tokens, err := provider.ParseTokens(raw)
		if err != nil {
			return nil, err
		}
		req.Tokens = tokens
	}
	for k, v := range attrs {
		if isReservedAttribute(k) {
			continue
		}
		if req.Parameters == nil {
			req.Parameters = make(map[string]string, len(attrs))
		}
		req.Parameters[k] = v
	}
	for _, v := range m.GetCurrentObjectVersion() {
		req.CurrentVersions = append(req.CurrentVersions, provider.ObjectVersion{ID: v.GetId(), Version: v.GetVersion()})
	}
	return req, nil
}

// decodePermission reads the JSON number upstream drivers send (420 for
// 0644). An empty or zero permission means the default mode: upstream
// drivers always send 420, and 0 would make every file unreadable.
func decodePermission(s string) (os.FileMode, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return provider.DefaultFileMode, nil
	}
	var mode uint32
	if err := json.Unmarshal([]byte(s), &mode); err != nil {
		return 0, provider.InvalidArgument("mount request permission is not a decimal file mode such as 420 (0644): %s", describeJSONError(err))
	}
	if mode&^0o777 != 0 {
		return 0, provider.InvalidArgument("mount request permission %d is outside 0..511 (0777)", mode)
	}
	if mode == 0 {
		return provider.DefaultFileMode, nil
	}
	return os.FileMode(mode), nil
}

func isReservedAttribute(k string) bool {
	return k == provider.AttrClass || strings.HasPrefix(k, provider.AttrKubeletPrefix)
}

func setIf(m map[string]string, k, v string) {
	if v != "" {
		m[k] = v
	}
}

// describeJSONError says what is wrong with a JSON document without quoting
// any of it: encoding/json messages may contain a character or a number of
// the input, which here may be part of a secret.
func describeJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("invalid JSON at byte %d", syntax.Offset)
	case errors.As(err, &typ):
		// Value may carry the literal ("number 12") and Field a map key.
		kind, _, _ := strings.Cut(typ.Value, " ")
		return fmt.Sprintf("found a JSON %s where a %s was expected", kind, typ.Type)
	case strings.Contains(err.Error(), "unexpected end of JSON input"):
		return "unexpected end of JSON input"
	}
	return "invalid JSON"
}
