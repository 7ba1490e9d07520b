// Package validate checks what a CSI node request carries before the driver
// touches anything: the volume id, the target path, the volume capability,
// the volume attributes (volume context) and the tokens kubelet passes.
// Every error is InvalidArgument and says what to fix; none quotes a token.
package validate

import (
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

// Input is a validated NodePublishVolume request.
type Input struct {
	VolumeID string
	Target   string
	Context  *VolumeContext
	GID      int // the pod's fsGroup (volume_mount_group), or -1
	Secrets  map[string]string
}

// VolumeID checks a CSI volume id.
func VolumeID(id string) error {
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

// TargetPath checks a target path: absolute, clean, not the root.
func TargetPath(p string) error {
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

// Publish checks everything about a NodePublishVolume request before
// anything is touched.
func Publish(req *csi.NodePublishVolumeRequest) (*Input, error) {
	if err := VolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := TargetPath(req.GetTargetPath()); err != nil {
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
	vc, err := ParseVolumeContext(req.GetVolumeContext(), tokensInSecrets)
	if err != nil {
		return nil, err
	}
	secrets, err := tokensFromSecrets(vc, req.GetSecrets())
	if err != nil {
		return nil, err
	}
	return &Input{
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
func tokensFromSecrets(vc *VolumeContext, secrets map[string]string) (map[string]string, error) {
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
