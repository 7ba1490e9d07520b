package kubeapi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// StartGarbageCollector runs kube-controller-manager with only the garbage
// collector, so that dependents (ownerReferences) are deleted after their
// last owner, as in a real cluster. Stop ends it with the rest.
func (s *Server) StartGarbageCollector() error {
	return s.StartControllers("garbagecollector")
}

// StartControllers runs kube-controller-manager with the named controllers
// (e.g. "garbagecollector", "deployment", "replicaset", "statefulset"):
// workloads then make ReplicaSets and pods as in a real cluster (pods stay
// Pending: there is no scheduler or kubelet). At most one per Server.
func (s *Server) StartControllers(controllers ...string) error {
	bin := filepath.Join(BinDir(), "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%w: kube-controller-manager not found in %s", ErrMissingBinaries, BinDir())
	}
	kubeconfig := filepath.Join(s.dir, "controller-manager.kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: s.Host, CertificateAuthorityData: s.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: s.Admin.BearerToken}
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "admin"}
	cfg.CurrentContext = "local"
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		return err
	}
	if err := s.spawn("kube-controller-manager", bin,
		"--kubeconfig="+kubeconfig, "--controllers="+strings.Join(controllers, ","), "--leader-elect=false",
		"--secure-port=0", "--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
	); err != nil {
		return err
	}
	for _, p := range s.procs {
		if p.name == "kube-controller-manager" {
			select {
			case <-p.done:
				return errors.New("kube-controller-manager exited: " + s.logTail(p.name))
			default:
			}
		}
	}
	return nil
}
