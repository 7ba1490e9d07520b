package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
	"github.com/secretfs/secretfs/provider/kubernetes"
	"github.com/secretfs/secretfs/test/kubeapi"
)

var (
	serverOnce sync.Once
	server     *kubeapi.Server
	serverErr  error
	nsCounter  atomic.Int64
)

func apiServer(t *testing.T) *kubeapi.Server {
	t.Helper()
	serverOnce.Do(func() { server, serverErr = kubeapi.Start() })
	return kubeapi.Require(t, server, serverErr)
}

func stopAPIServer() {
	if server != nil {
		server.Stop()
	}
}

// A host that is a cluster member mounts a Secret with the token of its
// kubeconfig, as a pod does with its own: the API server's RBAC decides.
func TestAgentKubernetesBackendWithAKubeconfigToken(t *testing.T) {
	requireRoot(t)
	s := apiServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns, sa := fmt.Sprintf("host-agent-%d", nsCounter.Add(1)), "web-vm"
	c := s.Client
	for _, err := range []error{
		create(c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})),
		create(c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})),
		create(c.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db"}, StringData: map[string]string{"password": "from-the-cluster"}}, metav1.CreateOptions{})),
		create(c.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "db"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"db"}, Verbs: []string{"get", "watch"}}}}, metav1.CreateOptions{})),
		create(c.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "db"},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "db"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}}, metav1.CreateOptions{})),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	token, _, err := s.Token(ctx, ns, sa, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := kubernetes.New(kubernetes.OptionsFromConfig(&rest.Config{Host: s.Host, TLSClientConfig: rest.TLSClientConfig{CAData: s.CAData}}))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	classFile := filepath.Join(dir, "class.yaml")
	classYAML := "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {name: db, namespace: " + ns +
		"}\nspec:\n  provider: kubernetes\n  parameters:\n    objects: |\n      - {secretName: db, key: password, path: db-password}\n"
	if err := os.WriteFile(classFile, []byte(classYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(token string) (string, error) {
		target := filepath.Join(dir, "secrets")
		rctx, stop := context.WithCancel(ctx)
		defer stop()
		mounted := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- Run(rctx, Config{ClassFile: classFile, Target: target, ServiceAccount: sa, Token: token,
				Providers: func(string) (provider.Provider, error) { return backend, nil },
				Mounted:   func() { close(mounted) }})
		}()
		select {
		case err := <-done:
			return "", err
		case <-mounted:
		}
		b, err := os.ReadFile(filepath.Join(target, "db-password"))
		stop()
		if rerr := <-done; rerr != nil {
			t.Fatal(rerr)
		}
		return string(b), err
	}
	if got, err := run(token); err != nil || got != "from-the-cluster" {
		t.Fatalf("with the kubeconfig's token: %q, %v", got, err)
	}
	if _, err := run(""); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("without a token: %v, want an error about the missing token", err)
	}

	// The class from the API server instead of a file (a host that is a
	// cluster member): the same class, read through the CRD.
	dyn, err := dynamic.NewForConfig(s.Admin)
	if err != nil {
		t.Fatal(err)
	}
	crdOnce.Do(func() { crdErr = createFromYAML(ctx, dyn, "../../deploy/crd.yaml", "") })
	if crdErr != nil {
		t.Fatal(crdErr)
	}
	gvr := schema.GroupVersionResource{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Resource: "secretproviderclasses"}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := createFromYAML(ctx, dyn, classFile, ns)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("creating the class: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the CRD is not served yet
	}
	if _, err := dyn.Resource(gvr).Namespace(ns).Get(ctx, "db", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	classes, err := class.NewAPI(ctx, s.Admin)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "from-api")
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	mounted := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(rctx, Config{Classes: classes, ClassName: "db", Namespace: ns, Target: target, ServiceAccount: sa, Token: token,
			Providers: func(string) (provider.Provider, error) { return backend, nil },
			Mounted:   func() { close(mounted) }})
	}()
	select {
	case err := <-done:
		t.Fatalf("class from the API server: %v", err)
	case <-mounted:
	}
	if b, err := os.ReadFile(filepath.Join(target, "db-password")); err != nil || string(b) != "from-the-cluster" {
		t.Fatalf("class from the API server: %q, %v", b, err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

var (
	crdOnce sync.Once
	crdErr  error
)

// createFromYAML creates the objects of a YAML file (in namespace ns when
// not empty).
func createFromYAML(ctx context.Context, dyn dynamic.Interface, path, ns string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			return err
		}
		if u.Object == nil {
			continue
		}
		gvk := u.GroupVersionKind()
		gvr := schema.GroupVersionResource{Group: gvk.Group, Version: gvk.Version, Resource: strings.ToLower(gvk.Kind) + "es"}
		if gvk.Kind == "CustomResourceDefinition" {
			gvr.Resource = "customresourcedefinitions"
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns != "" {
			u.SetNamespace(ns)
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Create(ctx, &u, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

func create[T any](_ T, err error) error { return err }
