package chart

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/secretfs/secretfs/test/ci"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// helmVersion is the helm that `make deps` builds (HELM_VERSION in
// test/tools/tools.mk).
const helmVersion = "v4.3.2"

const chartDir = "../../deploy/charts/secretfs"

// helm runs the pinned helm with its state in a temporary directory.
type helm struct {
	t          *testing.T
	bin        string
	home       string
	kubeconfig string
}

func newHelm(t *testing.T) *helm {
	t.Helper()
	bin := os.Getenv("HELM")
	if bin == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache")
		}
		bin = filepath.Join(cache, "secretfs", "helm-"+helmVersion, "helm")
	}
	if _, err := os.Stat(bin); err != nil {
		ci.Missing(t, "helm not found at %s (make deps builds it, or set HELM)", bin)
	}
	return &helm{t: t, bin: bin, home: t.TempDir()}
}

// withServer points helm at a kube-apiserver (admin credentials).
func (h *helm) withServer(s *kubeapi.Server) *helm {
	h.t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: s.Host, CertificateAuthorityData: s.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: s.Admin.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	cfg.CurrentContext = "test"
	h.kubeconfig = filepath.Join(h.home, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, h.kubeconfig); err != nil {
		h.t.Fatal(err)
	}
	return h
}

// run runs helm with args and returns its stdout; stderr goes into the error.
func (h *helm) run(args ...string) (string, error) {
	cmd := exec.Command(h.bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(h.home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(h.home, "config"),
		"HELM_DATA_HOME="+filepath.Join(h.home, "data"),
	)
	if h.kubeconfig != "" {
		cmd.Env = append(cmd.Env, "KUBECONFIG="+h.kubeconfig)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), &helmError{args: args, err: err, stderr: strings.TrimSpace(stderr.String())}
	}
	return stdout.String(), nil
}

// must runs helm and fails the test on an error.
func (h *helm) must(args ...string) string {
	h.t.Helper()
	out, err := h.run(args...)
	if err != nil {
		h.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

type helmError struct {
	args   []string
	err    error
	stderr string
}

func (e *helmError) Error() string {
	return "helm " + strings.Join(e.args, " ") + ": " + e.err.Error() + ": " + e.stderr
}
