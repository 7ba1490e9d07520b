// Package agent is the local agent: it mounts one SecretProviderClass at a
// directory outside Kubernetes, keeps it fresh, and unmounts it when stopped.
// It drives an in-process driver through the same NodePublishVolume and
// NodeUnpublishVolume calls kubelet makes, so it shares every check, the
// tmpfs handling and the atomic writer with the node plugin.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/provider"
)

// Config says what to mount where.
type Config struct {
	// ClassFile is a YAML file with one SecretProviderClass (or several, and
	// ClassName picks one).
	ClassFile string
	ClassName string
	// Classes and Namespace: without ClassFile, the class is ClassName in
	// Namespace of this source (the API server).
	Classes   class.Source
	Namespace string
	// Target is the directory to mount at; its parent is created if needed.
	Target string
	// Interval is how often the content is refreshed.
	Interval time.Duration
	// ServiceAccount is the identity the backend sees (default "default").
	ServiceAccount string
	Providers      func(name string) (provider.Provider, error)
	TmpfsSize      int64
	Logger         *slog.Logger
	// Token, when set, is handed to backends as the identity's token for
	// TokenAudience, as kubelet hands a pod's token to the driver: the
	// kubernetes backend reads Secrets with it (a kubeconfig's token).
	// Memory only.
	Token         string
	TokenAudience string
	// Owner owns the files; nil: driver.LocalOwner (root, 0700/0600).
	Owner *driver.Owner
	// Mounted, when set, is called once the first mount succeeded.
	Mounted func()
}

// ErrNotRoot is returned when the agent cannot mount because it is not root.
var ErrNotRoot = errors.New("must run as root to mount a tmpfs")

// Run mounts the class, refreshes it every Interval until ctx is done, then
// unmounts it and removes the target. A failed first mount leaves nothing.
func Run(ctx context.Context, cfg Config) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w (running as uid %d)", ErrNotRoot, os.Geteuid())
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Minute
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = "default"
	}
	cls, classes, err := findClass(ctx, cfg.ClassFile, cfg.ClassName, cfg.Classes, cfg.Namespace)
	if err != nil {
		return err
	}
	target, err := filepath.Abs(cfg.Target)
	if err != nil {
		return err
	}
	// The target is held by descriptor from here on (target.go).
	held, err := openTarget(target)
	if err != nil {
		return err
	}
	defer held.close()
	owner := driver.LocalOwner
	if cfg.Owner != nil {
		owner = *cfg.Owner
	}
	d, req, unpublish, err := mountHeld(ctx, held, target, volumeSpec{
		cls: cls, classes: classes, providers: cfg.Providers, tmpfsSize: cfg.TmpfsSize, interval: cfg.Interval,
		serviceAccount: cfg.ServiceAccount, token: cfg.Token, tokenAudience: cfg.TokenAudience, owner: owner, log: log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	log.Info("mounted", "class", cls.Name, "namespace", cls.Namespace, "target", target, "refresh", cfg.Interval)
	if cfg.Mounted != nil {
		cfg.Mounted()
	}

	tick := newRepublisher(d, req.VolumeId, cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			// Republish as kubelet does: the driver's rotation policy decides
			// whether the content is due; a failure keeps the last good content.
			if _, err := d.NodePublishVolume(ctx, req); err != nil && ctx.Err() == nil {
				log.Warn("refresh failed; keeping the last good content", "error", err)
			}
			tick.follow()
		case <-ctx.Done():
			if err := unpublish(); err != nil {
				return fmt.Errorf("unmounting %s: %w", target, err)
			}
			log.Info("unmounted", "target", target)
			return nil
		}
	}
}

// pickClass reads the class file and returns the class to mount.
func pickClass(path, name string) (*class.Class, error) {
	classes, err := class.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading class file %s: %w", path, err)
	}
	var found []*class.Class
	for _, c := range classes {
		if name == "" || c.Name == name {
			found = append(found, c)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0 && name != "":
		return nil, fmt.Errorf("class file %s has no SecretProviderClass named %q", path, name)
	case len(found) == 0:
		return nil, fmt.Errorf("class file %s has no SecretProviderClass", path)
	}
	return nil, fmt.Errorf("class file %s has %d SecretProviderClasses: pick one by name", path, len(found))
}

// publishRequest is what kubelet would send for an inline volume of class
// cls; the volume id is derived from the target so a restarted agent finds
// its own mount again.
// volumeSpec is what the agent's modes (mount, run, credentials) mount: a
// class, through an in-process driver of their own.
type volumeSpec struct {
	cls                  *class.Class
	classes              class.Source
	providers            func(name string) (provider.Provider, error)
	tmpfsSize            int64
	interval             time.Duration
	serviceAccount       string
	token, tokenAudience string
	owner                driver.Owner
	hooks                []hook.Hook
	log                  *slog.Logger
}

// mountHeld starts an in-process driver for v and publishes its class at
// the held target as kubelet would. The caller closes the driver after it
// unpublished; on error nothing is mounted and the driver is closed.
func mountHeld(ctx context.Context, held *hostTarget, target string, v volumeSpec) (*driver.Driver, *csi.NodePublishVolumeRequest, func() error, error) {
	host, _ := os.Hostname()
	d, err := driver.New(driver.Config{
		Hooks:            v.hooks,
		NodeID:           "local-" + host,
		Classes:          v.classes,
		Providers:        v.providers,
		TmpfsSize:        v.tmpfsSize,
		RotationInterval: v.interval,
		Logger:           v.log,
		// No restart recovery by mount path: a mount left by an earlier run
		// of `secretfs mount` is adopted by the publish below (its metadata
		// names this volume), through the held target; run's and
		// credentials' mounts never outlive their namespace.
		RecoverUnder: held.via(),
		Owner:        &v.owner,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	req := publishRequest(v.cls, target, v.serviceAccount)
	withToken(req, v.tokenAudience, v.token)
	unpublish, err := held.publish(ctx, d, req)
	if err != nil {
		d.Close()
		return nil, nil, nil, fmt.Errorf("mounting class %s/%s at %s: %w", v.cls.Namespace, v.cls.Name, target, err)
	}
	return d, req, unpublish, nil
}

func publishRequest(cls *class.Class, target, serviceAccount string) *csi.NodePublishVolumeRequest {
	sum := sha256.Sum256([]byte(target))
	id := "local-" + hex.EncodeToString(sum[:8])
	return &csi.NodePublishVolumeRequest{
		VolumeId:   id,
		TargetPath: target,
		Readonly:   true,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY},
		},
		VolumeContext: map[string]string{
			provider.AttrClass:          cls.Name,
			provider.AttrEphemeral:      "true",
			provider.AttrPodName:        "local-agent",
			provider.AttrPodNamespace:   cls.Namespace,
			provider.AttrPodUID:         id,
			provider.AttrServiceAccount: serviceAccount,
		},
	}
}

// withToken puts token into req's secrets field where kubelet puts the pod's
// tokens, for audience aud. An empty token adds nothing.
func withToken(req *csi.NodePublishVolumeRequest, aud, token string) {
	if token == "" {
		return
	}
	raw, _ := json.Marshal(map[string]map[string]string{aud: {"token": token}})
	req.Secrets = map[string]string{provider.AttrTokens: string(raw)}
}

// republisher ticks at the republish period of a volume's interval in
// force: the agent's, or its class's own (secretfs.dev/rotationInterval),
// as the driver reports it after each publish.
type republisher struct {
	*time.Ticker
	d        *driver.Driver
	volumeID string
	interval time.Duration
}

func newRepublisher(d *driver.Driver, volumeID string, interval time.Duration) *republisher {
	r := &republisher{Ticker: time.NewTicker(driver.RepublishPeriod(interval)), d: d, volumeID: volumeID, interval: interval}
	r.follow()
	return r
}

// follow adjusts the period to the volume's interval in force.
func (r *republisher) follow() {
	for _, st := range r.d.Status() {
		if st.VolumeID != r.volumeID {
			continue
		}
		if iv := time.Duration(st.RotationInterval); iv > 0 && iv != r.interval {
			r.interval = iv
			r.Reset(driver.RepublishPeriod(iv))
		}
	}
}
