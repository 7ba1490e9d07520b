package restart_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/secretfs/secretfs/internal/kube/restart"
)

// A tenant's bare pods under a disruption budget that never allows an
// eviction make every eviction wait for its backoff. The waits must not
// hold the one worker: another workload's restart, queued after them, is
// written while their retries are still waiting (here an hour away).
func TestRefusedEvictionHoldsNoOtherRestart(t *testing.T) {
	srv, cfg := start(t)
	ctx := context.Background()
	n := newNodeWith(t, cfg, restart.Options{EvictionRetries: 3, EvictionBackoff: time.Hour, Timeout: 2 * time.Hour})

	one := intstr.FromInt32(1)
	if _, err := srv.Client.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "wall"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "bare", Operator: metav1.LabelSelectorOpExists}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const attackers = 4
	for i := range attackers {
		p := bare(t, srv, "wall-"+string(rune('a'+i)), nil)
		p.Status.Phase = corev1.PodRunning
		if _, err := srv.Client.CoreV1().Pods(ns).UpdateStatus(ctx, &p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		n.Changed(ctx, vol(restarting, p, false, "flap"))
	}
	createDeployment(t, srv, "victim", 1)
	victim := livePods(t, srv, "victim", 1)[0]
	n.Changed(ctx, vol(restarting, victim, false, "v2"))

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("calls %v, events %q", n.calls.n, n.events.take())
		}
	})
	eventually(t, "the victim's Deployment restarted while the refused evictions wait", func() bool {
		d, err := srv.Client.AppsV1().Deployments(ns).Get(ctx, "victim", metav1.GetOptions{})
		return err == nil && d.Spec.Template.Annotations[restart.Annotation] != ""
	})
	if got := n.calls.get("POST pods/eviction"); got != attackers {
		t.Errorf("%d eviction attempts, want %d (one each; their retries wait an hour)", got, attackers)
	}
	if got := n.calls.get("PATCH deployments"); got != 1 {
		t.Errorf("%d Deployment patches, want 1", got)
	}
}
