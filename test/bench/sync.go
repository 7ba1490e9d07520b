package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/secretfs/secretfs/test/kubeapi"
)

// parseModes parses "on", "off" or both, comma-separated.
func parseModes(s string) ([]bool, error) {
	var out []bool
	for m := range strings.SplitSeq(s, ",") {
		switch strings.TrimSpace(m) {
		case "on", "true":
			out = append(out, true)
		case "off", "false":
			out = append(out, false)
		default:
			return nil, fmt.Errorf("takes on and/or off, not %q", m)
		}
	}
	return out, nil
}

// startAPI starts a real etcd + kube-apiserver for the Secret sync to write
// to, with the bench namespace, and writes its admin kubeconfig into dir.
func startAPI(ctx context.Context, cfg *config, dir string) (stop func(), err error) {
	srv, err := kubeapi.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the API server for -sync on: %w", err)
	}
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		srv.Stop()
		return nil, err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["bench"] = &clientcmdapi.Cluster{Server: srv.Host, CertificateAuthorityData: srv.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: srv.Admin.BearerToken}
	kc.Contexts["bench"] = &clientcmdapi.Context{Cluster: "bench", AuthInfo: "admin"}
	kc.CurrentContext = "bench"
	cfg.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, cfg.kubeconfig); err != nil {
		srv.Stop()
		return nil, err
	}
	return srv.Stop, nil
}
