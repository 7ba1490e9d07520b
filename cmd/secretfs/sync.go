package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/ignored"
	"github.com/secretfs/secretfs/driver/secretsync"
	"github.com/secretfs/secretfs/provider"
)

// syncFlags turn on the mirroring of mounted objects into Kubernetes
// Secrets (SecretProviderClass spec.secretObjects).
type syncFlags struct {
	secrets bool
	wait    time.Duration
}

func (s *syncFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.secrets, "sync-secrets", false, "mirror mounted objects into the Kubernetes Secrets a class's spec.secretObjects declares, in the pod's namespace, owned by the pods (needs create/get/patch on secrets: the sync-secrets RBAC); off: such classes mount and the pod gets a Warning Event saying the Secrets are not synced")
	fs.DurationVar(&s.wait, "sync-secrets-wait", 10*time.Second, "how long a first publish waits for its Secrets to be written before returning (the write goes on in the background)")
}

// warner is what hooks post Events with (the API events recorder).
type warner interface {
	Warning(pod provider.Pod, reason, message string)
}

// hooks returns the volume hooks of the driver: the Secret sync when on, and
// the Warning Event about class fields the driver ignores when Events are on.
func (s *syncFlags) hooks(restConfig *rest.Config, events driver.EventSink, fieldManager string, reg prometheus.Registerer, log *slog.Logger) ([]driver.VolumeHook, func(), error) {
	var hooks []driver.VolumeHook
	closeAll := func() {}
	w, _ := events.(warner)
	if s.secrets {
		if restConfig == nil {
			return nil, nil, errors.New("-sync-secrets needs the API server (a kubeconfig or in-cluster config)")
		}
		cfg := rest.CopyConfig(restConfig)
		cfg.UserAgent = rest.DefaultKubernetesUserAgent() + " secretfs-sync"
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		opts := secretsync.Options{Client: client, Registerer: reg, Logger: log, Wait: s.wait, FieldManager: fieldManager}
		if w != nil {
			opts.Events = w
		}
		syncer, err := secretsync.New(opts)
		if err != nil {
			return nil, nil, err
		}
		hooks = append(hooks, syncHook{syncer})
		closeAll = syncer.Close
	}
	if w != nil {
		hooks = append(hooks, ignored.New(w, s.secrets))
	}
	return hooks, closeAll, nil
}

// syncHook adapts the Syncer to the driver's hook interface.
type syncHook struct{ s *secretsync.Syncer }

func (h syncHook) Changed(ctx context.Context, v driver.VolumeInfo) {
	h.s.Changed(ctx, secretsync.Volume(v))
}
func (h syncHook) Gone(v driver.VolumeInfo) { h.s.Gone(secretsync.Volume(v)) }
