package driver

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/driver/hook"
	"github.com/secretfs/secretfs/internal/kube/kubecore"
	"github.com/secretfs/secretfs/internal/kube/secretsync"
	"github.com/secretfs/secretfs/test/kubeapi"
)

// The real driver on real tmpfs with the Secret sync against a real API
// server: the Secret is there, with the files' content, the moment
// NodePublishVolume returns (no polling), and again right after the
// republish that rotated the files.
func TestSyncedSecretExistsWhenPublishReturns(t *testing.T) {
	srv, err := kubeapi.Start()
	srv = kubeapi.Require(t, srv, err)
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	if _, err := srv.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client, err := kubecore.NewForConfig(srv.Admin)
	if err != nil {
		t.Fatal(err)
	}
	syncer, err := secretsync.New(secretsync.Options{Client: client})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(syncer.Close)
	const interval = 300 * time.Millisecond
	clock := newClock()
	e := newEnv(t, func(c *Config) { c.RotationInterval, c.Now = interval, clock.Now; c.Hooks = []hook.Hook{syncer} })
	e.classes["team-a/app"].SecretObjects = []class.SecretObject{{SecretName: "app-env", Data: []class.SecretObjectData{{ObjectName: "a", Key: "A"}}}}

	value := func() string {
		s, err := srv.Client.CoreV1().Secrets("team-a").Get(ctx, "app-env", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the Secret is not there when the publish has returned: %v", err)
		}
		return string(s.Data["A"])
	}
	target := e.target("vol")
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := value(); got != "a=v#0" {
		t.Fatalf("after the first publish A=%q", got)
	}
	e.prov.set(func(p *testProvider) { p.gen = 1 })
	clock.Advance(interval)
	if err := e.publish("vol-1", target); err != nil {
		t.Fatal(err)
	}
	if got := value(); got != "a=v#1" {
		t.Fatalf("after the rotating republish A=%q", got)
	}
	if err := e.unpublish("vol-1", target); err != nil {
		t.Fatal(err)
	}
}
