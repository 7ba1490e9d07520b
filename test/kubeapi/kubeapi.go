// Package kubeapi runs a real etcd and kube-apiserver on loopback for
// tests: generated PKI, RBAC authorization, an admin bearer token, a
// service-account issuer and an audit log of Secret access.
//
// Binaries are looked up in $SECRETFS_K8S_BIN, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/secretfs/k8s-v1.37.2/bin.
package kubeapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/secretfs/secretfs/test/ci"
)

// Issuer is the service-account issuer, which is also the API server's
// audience (no --api-audiences flag: it defaults to the issuer).
const Issuer = "https://kubernetes.default.svc"

// ErrMissingBinaries means etcd or kube-apiserver is not installed.
var ErrMissingBinaries = errors.New("kubeapi: etcd or kube-apiserver binary missing")

// Server is a running etcd + kube-apiserver pair.
type Server struct {
	// Admin is a system:masters client config (bearer token).
	Admin  *rest.Config
	Client kubernetes.Interface
	// Host and CAData are what a client needs to reach and trust the server.
	Host   string
	CAData []byte

	dir       string
	auditFile string
	procs     []*proc
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// BinDir is where the binaries are expected.
func BinDir() string {
	if d := os.Getenv("SECRETFS_K8S_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "secretfs", "k8s-v1.37.2", "bin")
}

// Require returns s, or fails the test when err says the server could not
// start. When only the binaries are missing it skips, or fails in CI
// (ci.Missing); any other error fails.
func Require(t testing.TB, s *Server, err error) *Server {
	t.Helper()
	if err == nil {
		return s
	}
	if errors.Is(err, ErrMissingBinaries) {
		ci.Missing(t, "%v (build them into %s or set SECRETFS_K8S_BIN)", err, BinDir())
	}
	t.Fatalf("kube-apiserver: %v", err)
	return nil
}

// Start starts etcd and kube-apiserver in a new temporary directory and
// waits until the API server is ready. Stop removes everything.
//
// Their ports are picked free, then closed and handed to the processes by
// number; another process may take one in between, so a start that fails
// with "address already in use" is retried on fresh ports.
func Start() (*Server, error) {
	for attempt := 1; ; attempt++ {
		s, err := startOnce()
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return s, err
		}
	}
}

func startOnce() (_ *Server, err error) {
	bin := BinDir()
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("%w: %s not found in %s", ErrMissingBinaries, name, bin)
		}
	}
	dir, err := os.MkdirTemp("", "kubeapi-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, auditFile: filepath.Join(dir, "audit.log")}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	p, err := writePKI(dir)
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	etcdClient := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	etcdPeer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	if err := s.spawn("etcd", filepath.Join(bin, "etcd"),
		"--name=default", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdClient, "--advertise-client-urls="+etcdClient,
		"--listen-peer-urls="+etcdPeer, "--initial-advertise-peer-urls="+etcdPeer,
		"--initial-cluster=default="+etcdPeer, "--unsafe-no-fsync", "--log-level=warn",
	); err != nil {
		return nil, err
	}

	adminToken := randomHex(16)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(adminToken+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	// Metadata-level audit of Secrets: who read which Secret, never its data.
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o600); err != nil {
		return nil, err
	}
	s.Host = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	if err := s.spawn("kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers="+etcdClient,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[2]),
		"--endpoint-reconciler-type=none", "--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+p.certFile, "--tls-private-key-file="+p.keyFile, "--client-ca-file="+p.caFile,
		"--token-auth-file="+tokens, "--authorization-mode=RBAC",
		"--service-account-issuer="+Issuer,
		"--service-account-key-file="+p.saKeyFile, "--service-account-signing-key-file="+p.saKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24", "--profiling=false",
		// As clusters that run CSI node plugins are: their DaemonSets are
		// privileged (the chart tests install one).
		"--allow-privileged=true",
		"--audit-policy-file="+policy, "--audit-log-path="+s.auditFile, "--audit-log-format=json",
		"--audit-log-mode=blocking", "--audit-log-maxbackup=0",
	); err != nil {
		return nil, err
	}
	s.CAData = p.caPEM
	s.Admin = &rest.Config{
		Host:            s.Host,
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		QPS:             -1,
	}
	if s.Client, err = kubernetes.NewForConfig(s.Admin); err != nil {
		return nil, err
	}
	if err := s.waitReady(60 * time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
- level: None
`

func (s *Server) spawn(name, path string, args ...string) error {
	logFile, err := os.Create(filepath.Join(s.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	s.procs = append(s.procs, p)
	go func() { _ = cmd.Wait(); logFile.Close(); close(p.done) }()
	return nil
}

func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		for _, p := range s.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited: %s", p.name, s.logTail(p.name))
			default:
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s: %v; log: %s", timeout, last, s.logTail("kube-apiserver"))
}

func (s *Server) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(s.dir, name+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Stop ends both processes and removes the directory.
func (s *Server) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	}
	_ = os.RemoveAll(s.dir)
}

// Token mints a token for a service account through the TokenRequest API,
// as kubelet does for a CSIDriver tokenRequests item. No audiences means the
// API server's own audiences. bound, if set, ties the token's validity to
// that object (kubelet binds to the pod).
func (s *Server) Token(ctx context.Context, namespace, serviceAccount string, audiences []string, bound *authenticationv1.BoundObjectReference) (string, time.Time, error) {
	seconds := int64(3600)
	tr, err := s.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &seconds, BoundObjectRef: bound},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, err
	}
	return tr.Status.Token, tr.Status.ExpirationTimestamp.Time, nil
}

// AuditEvent is one audit log entry (metadata level).
type AuditEvent struct {
	Verb       string `json:"verb"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef struct {
		Resource  string `json:"resource"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// AuditEvents returns every audited Secret request so far.
func (s *Server) AuditEvents() ([]AuditEvent, error) {
	f, err := os.Open(s.auditFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []AuditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var ev AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	return out, sc.Err()
}

// Metric sums the samples of a Prometheus metric from /metrics whose labels
// include every pair in match.
func (s *Server) Metric(ctx context.Context, name string, match map[string]string) (float64, error) {
	body, err := s.Client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, err
	}
	var sum float64
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for k, v := range match {
			if !strings.Contains(line, k+`="`+v+`"`) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// OpenSecretWatches is the number of watch requests on Secrets the API
// server is serving now.
func (s *Server) OpenSecretWatches(ctx context.Context) (int, error) {
	v, err := s.Metric(ctx, "apiserver_longrunning_requests", map[string]string{"verb": "WATCH", "resource": "secrets"})
	return int(v), err
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
