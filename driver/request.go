// What a CSI node request carries, checked before the driver
// touches anything: the volume id, the target path, the volume capability,
// the volume attributes (volume context) and the tokens kubelet passes.
// Every error is InvalidArgument and says what to fix; none quotes a token.

package driver

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/secretfs/secretfs/provider"
)

// maxVolumeIDBytes is the CSI spec's limit on volume ids.
const maxVolumeIDBytes = 128

// publishInput is a validated NodePublishVolume request.
type publishInput struct {
	VolumeID string
	Target   string
	Context  *volumeContext
	GID      int // the pod's fsGroup (volume_mount_group), or -1
	Secrets  map[string]string
}

// checkVolumeID checks a CSI volume id.
func checkVolumeID(id string) error {
	switch {
	case id == "":
		return provider.InvalidArgument("volume id is missing")
	case len(id) > maxVolumeIDBytes:
		return provider.InvalidArgument("volume id is %d bytes long, the CSI limit is %d", len(id), maxVolumeIDBytes)
	case !utf8.ValidString(id) || strings.ContainsFunc(id, unicode.IsControl):
		return provider.InvalidArgument("volume id %q contains control characters or invalid UTF-8", id)
	}
	return nil
}

// checkTargetPath checks a target path: absolute, clean, not the root.
func checkTargetPath(p string) error {
	switch {
	case p == "":
		return provider.InvalidArgument("target path is missing")
	case len(p) > 4096:
		return provider.InvalidArgument("target path is %d bytes long, the limit is 4096", len(p))
	case strings.IndexByte(p, 0) >= 0:
		return provider.InvalidArgument("target path contains a NUL byte")
	case !filepath.IsAbs(p):
		return provider.InvalidArgument("target path %q is not absolute", p)
	case filepath.Clean(p) != p:
		return provider.InvalidArgument("target path %q is not clean (it should be %q)", p, filepath.Clean(p))
	case p == "/":
		return provider.InvalidArgument("target path may not be the root directory")
	}
	return nil
}

// parsePublish checks everything about a NodePublishVolume request before
// anything is touched.
func parsePublish(req *csi.NodePublishVolumeRequest) (*publishInput, error) {
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := checkTargetPath(req.GetTargetPath()); err != nil {
		return nil, err
	}
	gid, err := capability(req.GetVolumeCapability())
	if err != nil {
		return nil, err
	}
	if !req.GetReadonly() {
		return nil, provider.InvalidArgument("secretfs volumes are read-only: set readOnly: true on the pod's csi volume")
	}
	_, tokensInSecrets := req.GetSecrets()[provider.AttrTokens]
	vc, err := parseVolumeContext(req.GetVolumeContext(), tokensInSecrets)
	if err != nil {
		return nil, err
	}
	secrets, err := tokensFromSecrets(vc, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	return &publishInput{
		VolumeID: req.GetVolumeId(),
		Target:   req.GetTargetPath(),
		Context:  vc,
		GID:      gid,
		Secrets:  secrets,
	}, nil
}

// tokensFromSecrets takes the pod's tokens from the request's secrets, where
// kubelet puts them for a CSIDriver with serviceAccountTokenInSecrets: true
// (the CSI field meant for sensitive data, which no request logger prints).
// The key is removed from what backends see as nodePublishSecretRef data, so
// a fresh token per pod does not change the node cache key.
//
// Where tokens come from (tokensFromSecrets): when the secrets field carries the
// key, it is the only source and the provider.AttrTokens volume attribute is ignored.
// kubelet then leaves the attribute alone, so whatever is there was written
// by the pod author, who could otherwise hand the driver a forged token
// (with a far-future expiry, the "freshest" one for the shared Secret watch
// and the Azure token holder of that service account). Without the key,
// kubelet (every version since 1.20, for a CSIDriver with tokenRequests and
// without serviceAccountTokenInSecrets) overwrites the attribute with the
// tokens it minted, so the attribute is trusted.
func tokensFromSecrets(vc *volumeContext, secrets map[string]string) (map[string]string, error) {
	raw, ok := secrets[provider.AttrTokens]
	if !ok {
		return secrets, nil
	}
	rest := make(map[string]string, len(secrets)-1)
	for k, v := range secrets {
		if k != provider.AttrTokens {
			rest[k] = v
		}
	}
	vc.Tokens = nil
	if raw == "" {
		return rest, nil
	}
	toks, err := provider.ParseTokens(raw)
	if err != nil {
		return nil, err
	}
	vc.Tokens = toks
	return rest, nil
}

// capability accepts mount access on tmpfs and returns the group kubelet
// asks for (VOLUME_MOUNT_GROUP: the pod's fsGroup), or -1.
func capability(c *csi.VolumeCapability) (int, error) {
	if c == nil {
		return -1, provider.InvalidArgument("volume capability is missing")
	}
	if c.GetBlock() != nil {
		return -1, provider.InvalidArgument("block access is not supported: secretfs volumes are file systems (use mount access)")
	}
	m := c.GetMount()
	if m == nil {
		return -1, provider.InvalidArgument("volume capability must request mount access")
	}
	if fs := m.GetFsType(); fs != "" && fs != "tmpfs" {
		return -1, provider.InvalidArgument("file system type %q is not supported: secretfs volumes are always tmpfs (leave fsType empty)", fs)
	}
	if len(m.GetMountFlags()) > 0 {
		return -1, provider.InvalidArgument("mount options are not supported: secretfs always mounts with nosuid,nodev,noexec and a size cap")
	}
	gid := -1
	if g := m.GetVolumeMountGroup(); g != "" {
		n, err := strconv.ParseUint(g, 10, 31)
		if err != nil {
			return -1, provider.InvalidArgument("volume mount group %q is not a numeric group id", g)
		}
		gid = int(n)
	}
	return gid, nil
}

// volumeContext is what a publish learns from the volume attributes.
type volumeContext struct {
	Class  string
	Pod    provider.Pod
	Tokens map[string]provider.Token
	// IgnoredTokenAttr: the volume attributes carried provider.AttrTokens although
	// kubelet passed the tokens in the secrets field, so the pod author
	// wrote it; it was ignored.
	IgnoredTokenAttr bool
}

// parseVolumeContext validates the attributes of an ephemeral inline volume.
// Errors are InvalidArgument and say what to fix; they never quote a token.
// With tokensInSecrets (kubelet passed the tokens in the request's secrets
// field) the provider.AttrTokens attribute is not read at all: see tokensFromSecrets.
func parseVolumeContext(attrs map[string]string, tokensInSecrets bool) (*volumeContext, error) {
	if eph := attrs[provider.AttrEphemeral]; eph != "true" {
		if eph == "" {
			eph = "missing"
		} else {
			eph = fmt.Sprintf("%.20q", eph)
		}
		return nil, provider.InvalidArgument("secretfs serves only CSI ephemeral inline volumes, but %s is %s: use a csi volume in the pod spec, and a CSIDriver with volumeLifecycleModes [Ephemeral] and podInfoOnMount: true", provider.AttrEphemeral, eph)
	}
	vc := &volumeContext{
		Class: attrs[provider.AttrClass],
		Pod: provider.Pod{
			Namespace:      attrs[provider.AttrPodNamespace],
			Name:           attrs[provider.AttrPodName],
			UID:            attrs[provider.AttrPodUID],
			ServiceAccount: attrs[provider.AttrServiceAccount],
		},
	}
	if vc.Class == "" {
		return nil, provider.InvalidArgument("volume attribute %s is missing: set volumeAttributes.%s to the name of a SecretProviderClass in the pod's namespace", provider.AttrClass, provider.AttrClass)
	}
	if err := checkName(vc.Class, 253, true); err != nil {
		return nil, provider.InvalidArgument("volume attribute %s %.80q is not a valid object name: %v", provider.AttrClass, vc.Class, err)
	}
	if vc.Pod.Namespace == "" {
		return nil, provider.InvalidArgument("volume attribute %s is missing: the CSIDriver object must set podInfoOnMount: true", provider.AttrPodNamespace)
	}
	if err := checkName(vc.Pod.Namespace, 63, false); err != nil {
		return nil, provider.InvalidArgument("volume attribute %s %.80q is not a valid namespace: %v", provider.AttrPodNamespace, vc.Pod.Namespace, err)
	}
	for key, val := range map[string]string{provider.AttrPodName: vc.Pod.Name, provider.AttrPodUID: vc.Pod.UID, provider.AttrServiceAccount: vc.Pod.ServiceAccount} {
		if val != "" {
			if err := checkName(val, 253, true); err != nil {
				return nil, provider.InvalidArgument("volume attribute %s %.80q is invalid: %v", key, val, err)
			}
		}
	}
	if _, ok := attrs[provider.AttrTokens]; ok && tokensInSecrets {
		vc.IgnoredTokenAttr = true
	} else if raw, ok := attrs[provider.AttrTokens]; ok && raw != "" {
		toks, err := provider.ParseTokens(raw)
		if err != nil {
			return nil, err
		}
		vc.Tokens = toks
	}
	return vc, nil
}

// checkName accepts Kubernetes object names: lowercase letters, digits, '-'
// and, for DNS subdomains, '.'; starting and ending alphanumeric.
func checkName(s string, max int, dots bool) error {
	if len(s) > max {
		return fmt.Errorf("longer than %d characters", max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || dots && c == '.'
		if !ok {
			return errors.New("only lowercase letters, digits and '-'" + map[bool]string{true: " or '.'", false: ""}[dots] + " are allowed")
		}
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }
