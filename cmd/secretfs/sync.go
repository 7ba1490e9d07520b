package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/driver"
	"github.com/secretfs/secretfs/driver/budget"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/ignored"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/internal/kube/podstatus"
	"github.com/secretfs/secretfs/internal/kube/restart"
	"github.com/secretfs/secretfs/internal/kube/secretsync"
	"github.com/secretfs/secretfs/provider"
)

// syncFlags turn on the mirroring of mounted objects into Kubernetes
// Secrets (SecretProviderClass spec.secretObjects).
type syncFlags struct {
	secrets   bool
	wait      time.Duration
	maxBytes  quantityFlag
	podStatus bool
	statusQPS float64
	owner     string
	// restart turns on restarts on change (secretfs.dev/onChange).
	restart    bool
	restartQPS float64
}

func (s *syncFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&s.secrets, "sync-secrets", false, "mirror mounted objects into the Kubernetes Secrets a class's spec.secretObjects declares, in the pod's namespace, owned by the pods' controllers or the pods (-sync-owner; needs create/patch on secrets: the sync-secrets RBAC and admission policy); off: such classes mount and the pod gets a Warning Event saying the Secrets are not synced")
	fs.BoolVar(&s.podStatus, "pod-status", false, "keep a SecretProviderClassPodStatus per pod volume, as the Secrets Store CSI Driver does (needs its CRD and the pod-status RBAC); written off the publish path")
	fs.Float64Var(&s.statusQPS, "pod-status-qps", 5, "API requests per second the SecretProviderClassPodStatus writer may make (burst twice that)")
	s.maxBytes.bytes = secretsync.DefaultMaxClassBytes
	fs.Var(&s.maxBytes, strings.TrimPrefix(secretsync.MaxClassBytesFlag, "--"), "most bytes of files one class's spec.secretObjects may sync, each file counted once however many Secrets use it (a quantity, e.g. 1Mi); what the sync holds counts in the node budget until written")
	fs.StringVar(&s.owner, strings.TrimPrefix(secretsync.OwnerFlag, "--"), string(secretsync.OwnerController), "owner of a synced Secret: controller (the pod's ReplicaSet, StatefulSet, DaemonSet or Job, the pod when it has none, as the Secrets Store CSI Driver does; one get of the pod per volume) or pod (every pod an owner: the Secret goes with its last pod, one owner and one write per pod)")
	fs.BoolVar(&s.restart, strings.TrimPrefix(restart.Flag, "--"), false, "restart a pod's workload when the content of a volume whose class sets secretfs.dev/onChange: restart changes: a rolling restart of its Deployment, StatefulSet or DaemonSet (a pod-template annotation, as kubectl rollout restart), an eviction of a pod without one (needs the restart-on-change RBAC and admission policy); off: such classes mount and the pod gets a Warning Event saying nothing restarts")
	fs.Float64Var(&s.restartQPS, "restart-qps", 5, "API requests per second the restarts on change may make (burst twice that)")
	fs.DurationVar(&s.wait, "sync-secrets-wait", 10*time.Second, "how long a first publish waits for its Secrets to be written before returning (the write goes on in the background)")
}

// warner is what hooks post Events with (the API events recorder).
type warner interface {
	Warning(pod provider.Pod, reason, message string)
}

// hooks returns the volume hooks of the driver: the Secret sync when on, the
// restarts on change when on, and
// the Warning Event about class fields the driver ignores when Events are on.
// nodeBudget is the driver's node budget (nil: none), which the sync charges.
func (s *syncFlags) hooks(ctx context.Context, restConfig *rest.Config, nodeID string, events driver.EventSink, fieldManager string, nodeBudget *budget.Budget, reg prometheus.Registerer, log *slog.Logger) ([]hook.Hook, func(), error) {
	var hooks []hook.Hook
	closeAll := func() {}
	w, _ := events.(warner)
	owner, err := secretsync.ParseOwnerMode(s.owner)
	if err != nil {
		return nil, nil, err
	}
	if s.secrets {
		if restConfig == nil {
			return nil, nil, errors.New("-sync-secrets needs the API server (a kubeconfig or in-cluster config)")
		}
		cfg := rest.CopyConfig(restConfig)
		cfg.UserAgent = rest.DefaultKubernetesUserAgent() + " secretfs-sync"
		client, err := kubecore.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		opts := secretsync.Options{Client: client, Registerer: reg, Logger: log, Wait: s.wait, FieldManager: fieldManager,
			Budget: nodeBudget, MaxClassBytes: s.maxBytes.bytes, Owner: owner}
		if w != nil {
			opts.Events = w
		}
		syncer, err := secretsync.New(opts)
		if err != nil {
			return nil, nil, err
		}
		hooks = append(hooks, syncer)
		closeAll = syncer.Close
	}
	if s.podStatus {
		if restConfig == nil {
			return nil, nil, errors.New("-pod-status needs the API server (a kubeconfig or in-cluster config)")
		}
		client, err := dynamic.NewForConfig(restConfig)
		if err != nil {
			return nil, nil, err
		}
		writer, err := podstatus.New(podstatus.Options{Client: client, Node: nodeID, QPS: s.statusQPS, Burst: int(2 * s.statusQPS),
			Logger: log, Registerer: reg, FieldManager: fieldManager})
		if err != nil {
			return nil, nil, err
		}
		go writer.Run(ctx)
		hooks = append(hooks, writer)
	}
	if s.restart {
		if restConfig == nil {
			return nil, nil, errors.New(restart.Flag + " needs the API server (a kubeconfig or in-cluster config)")
		}
		cfg := rest.CopyConfig(restConfig)
		cfg.UserAgent = rest.DefaultKubernetesUserAgent() + " secretfs-restart"
		cfg.QPS, cfg.Burst = float32(s.restartQPS), max(1, int(2*s.restartQPS))
		restart.ClientConfig(cfg)
		client, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, nil, err
		}
		opts := restart.Options{Client: client, Logger: log, FieldManager: fieldManager, Registerer: reg}
		if e, ok := events.(restart.EventSink); ok {
			opts.Events = e
		}
		r, err := restart.New(opts)
		if err != nil {
			return nil, nil, err
		}
		hooks = append(hooks, r)
		closeSync := closeAll
		closeAll = func() { closeSync(); r.Close() }
	}
	if w != nil {
		hooks = append(hooks, ignored.New(w, s.secrets, s.restart))
	}
	return hooks, closeAll, nil
}
