package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	spc "github.com/secretfs/secretfs/driver/class"
	"github.com/secretfs/secretfs/provider"
)

// A tenant labels Secrets near the API server's size limit and writes
// classes whose labelSelector selects them all, one class per pod, and
// starts the pods at once: every publish lists pages of these Secrets with
// the pod's token. Each list is cut at the volume's wire allowance, but
// the node's publishes together must not add up past the driver's memory
// limit: the driver in a cgroup of the shipped limit is never OOM-killed,
// refuses each such volume (ResourceExhausted, or Unavailable while the
// others fill the node's bound of fetches in flight), and mounts a small
// selector class published among them, and after them.
func TestSelectorsOfLargeSecretsInShippedMemoryLimit(t *testing.T) {
	ctx, api, dyn := tenantAPI(t)
	c := api.Client
	if _, err := c.CoreV1().ServiceAccounts("team-a").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().Roles("team-a").Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "list"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"list", "watch"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().RoleBindings("team-a").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "list"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "list"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "app", Namespace: "team-a"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// 24 Secrets of 700 KiB: one list page of them is about 22 MiB of JSON.
	const large = 24
	for i := range large {
		if _, err := c.CoreV1().Secrets("team-a").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("big-%02d", i), Labels: map[string]string{"sel": "big", "n": fmt.Sprint(i)}},
			Data:       map[string][]byte{"v": []byte(strings.Repeat(string(rune('a'+i%26)), 700<<10))},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CoreV1().Secrets("team-a").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "small", Labels: map[string]string{"sel": "small"}},
		Data:       map[string][]byte{"v": []byte("ok")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	classes := dyn.Resource(spc.GVR).Namespace("team-a")
	// Volumes of 7 MiB each (ten Secrets of 700 KiB) that fill most of
	// the node budget before the attack: their tmpfs pages are charged to
	// the driver's cgroup too.
	const fills, perFill = 4, 10
	for i := range fills * perFill {
		if _, err := c.CoreV1().Secrets("team-a").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("fill-%02d", i), Labels: map[string]string{"sel": fmt.Sprintf("fill-%d", i/perFill)}},
			Data:       map[string][]byte{"v": []byte(strings.Repeat(string(rune('a'+i%26)), 700<<10))},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range fills {
		u := spcObject(fmt.Sprintf("fill-%d", i), fmt.Sprintf("      - labelSelector: sel=fill-%d\n", i))
		u.Object["spec"].(map[string]any)["provider"] = "kubernetes"
		if _, err := classes.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// One class per pod (different selectors: nothing is shared).
	const pods = 12
	for i := range pods {
		u := spcObject(fmt.Sprintf("sel-%d", i), fmt.Sprintf("      - labelSelector: \"sel=big,n!=%d\"\n", 100+i))
		u.Object["spec"].(map[string]any)["provider"] = "kubernetes"
		if _, err := classes.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Small classes (the second with another selector, so that the node
	// cache shares nothing between them).
	for name, sel := range map[string]string{"sel-small": "sel=small", "sel-small-b": "sel=small,n!=1"} {
		u := spcObject(name, "      - labelSelector: \""+sel+"\"\n")
		u.Object["spec"].(map[string]any)["provider"] = "kubernetes"
		if _, err := classes.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	tok, exp, err := api.Token(ctx, "team-a", "app", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tokens := fmt.Sprintf(`{"":{"token":%q,"expirationTimestamp":%q}}`, tok, exp.UTC().Format(time.RFC3339))

	limit := shippedMemoryLimit(t)
	cg := newMemcg(t, limit)
	dir := t.TempDir()
	t.Cleanup(func() { unmountAllUnder(dir) })
	kubeconfig := filepath.Join(dir, "kubeconfig")
	writeKubeconfig(t, kubeconfig, api)
	csiSock := filepath.Join(dir, "csi.sock")
	drv := cg.startIn(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--kubeconfig", kubeconfig,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "",
		"--backends", "kubernetes", "--events=false")
	node := nodeClient(t, csiSock)
	req := func(class string, n int) (string, func() error) {
		target := filepath.Join(dir, fmt.Sprintf("%s-%d", class, n))
		r := publishRequest(class, target)
		r.VolumeId = fmt.Sprintf("vol-%s-%d", class, n)
		r.VolumeContext["csi.storage.k8s.io/pod.uid"] = fmt.Sprintf("0b7d9a4e-3f1c-4c2e-8d6a-%012d", n)
		r.VolumeContext[provider.AttrTokens] = tokens
		return target, func() error {
			pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			_, err := node.NodePublishVolume(pctx, r)
			return err
		}
	}
	// Wait until the driver serves classes (the informer's first list).
	_, small := req("sel-small", 1000)
	var werr error
	for range 100 {
		if werr = small(); werr == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if werr != nil {
		t.Fatalf("the small selector class before the attack: %v", werr)
	}

	// Unavailable is the node's bound of fetches in flight, which kubelet
	// retries: here a fill volume's spare refresh (its selector's watch
	// tells it of a change at once when the watch saw another list version)
	// can overlap the next fill volume's publish.
	retryUnavailable := func(publish func() error) error {
		err := publish()
		for i := 0; i < 5 && status.Code(err).String() == "Unavailable"; i++ {
			time.Sleep(time.Second)
			err = publish()
		}
		return err
	}
	for i := range fills {
		_, publish := req(fmt.Sprintf("fill-%d", i), 2000+i)
		if err := retryUnavailable(publish); err != nil {
			t.Fatalf("fill volume %d: %v", i, err)
		}
	}
	filled := cg.peak(t)

	var wg sync.WaitGroup
	errs := make([]error, pods)
	for i := range pods {
		_, publish := req(fmt.Sprintf("sel-%d", i), i)
		wg.Go(func() { errs[i] = publish() })
	}
	// Another pod's small selector class, published in the middle of it.
	var smallErr error
	_, during := req("sel-small-b", 1002)
	wg.Go(func() { smallErr = during() })
	wg.Wait()
	if smallErr != nil {
		t.Errorf("a small selector class published during the attack: %v", smallErr)
	}
	codes := map[string]int{}
	for _, err := range errs {
		codes[status.Code(err).String()]++
	}
	peak := cg.peak(t)
	t.Logf("%d volumes of 7 MiB (cgroup peak %d MiB), then %d concurrent publishes of selectors over %d Secrets of 700 KiB: codes %v; cgroup peak %d MiB of %d MiB; OOM kills %d",
		fills, filled>>20, pods, large, codes, peak>>20, limit>>20, cg.oomKills(t))
	if k := cg.oomKills(t); k != 0 || !alive(drv) {
		t.Fatalf("the driver was OOM-killed (%d kills)", k)
	}
	// Each is refused: over its volume's allowance (ResourceExhausted), or
	// while the others fill the node's bound of fetches (Unavailable, which
	// kubelet retries).
	if codes["ResourceExhausted"]+codes["Unavailable"] != pods {
		t.Errorf("codes %v, want ResourceExhausted or Unavailable for all %d (%v)", codes, pods, errs)
	}
	// Alone on the node, such a volume meets its own limit: the code says
	// what to change. (A refresh of another volume may be in flight: then
	// Unavailable, and kubelet retries, as here.)
	_, alone := req("sel-0", pods)
	err = retryUnavailable(alone)
	if status.Code(err).String() != "ResourceExhausted" || !strings.Contains(err.Error(), "--tmpfs-size") {
		t.Errorf("one selector over Secrets of 16 MiB alone: %v, want ResourceExhausted naming --tmpfs-size", err)
	}
	if peak >= limit {
		t.Fatalf("cgroup peak %d reached the limit %d", peak, limit)
	}
	// A small selector class still mounts.
	target, publish := req("sel-small", 1001)
	if err := publish(); err != nil {
		t.Fatalf("the small selector class after the attack: %v", err)
	}
	if got := readTree(t, target)["small/v"]; !strings.HasSuffix(got, " ok") {
		t.Errorf("small/v is %q", got)
	}
}
