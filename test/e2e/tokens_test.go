//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A pod author can write csi.storage.k8s.io/serviceAccount.tokens into the
// pod's volume attributes; with the CSIDriver's serviceAccountTokenInSecrets
// kubelet passes the real tokens in the secrets field and leaves that
// attribute alone. The driver must read with kubelet's token only:
//   - a pod whose service account may not read the Secret, lending itself a
//     valid token of one that may, is refused (its own token was used);
//   - a pod that may read it, with a forged token in the attribute, mounts
//     (a forged token would be rejected by the API server).
//
// The API server's audit log (SECRETFS_AUDIT_LOG; required) shows exactly
// those users reading the Secret: the refused one and the reader, and never
// an unauthenticated request.
func TestTokenAttributeFromThePodIsIgnored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := newNamespace(t)
	value := "pw-" + randHex(8)
	if _, err := client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Data:       map[string][]byte{"password": []byte(value)},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createServiceAccount(t, ns, "reader")
	createServiceAccount(t, ns, "stranger")
	grantSecret(t, ns, "reader", "db", "get", "watch")
	createClass(t, ns, "db", "kubernetes", map[string]any{"objects": "- {secretName: db, key: password}\n"})

	// A real token of the reader, for the API server's own audience.
	tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "reader", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lent := fmt.Sprintf(`{"":{"token":%q,"expirationTimestamp":"2999-01-01T00:00:00Z"}}`, tr.Status.Token)
	forged := `{"":{"token":"forged.token.value","expirationTimestamp":"2999-01-01T00:00:00Z"}}`

	stranger := createPodWithAttrs(t, ns, "stranger", "stranger", "db", lent)
	msg := waitEvent(t, stranger, "FailedMount", "PermissionDenied", "service account "+ns+"/stranger")
	if strings.Contains(msg, tr.Status.Token) || strings.Contains(msg, value) {
		t.Fatalf("event reveals a token or the value: %s", msg)
	}
	reader := waitReady(t, createPodWithAttrs(t, ns, "reader", "reader", "db", forged))
	if got := readVolume(t, reader)["password"]; got.Content != value {
		t.Fatalf("reader pod sees %+v", got)
	}
	deletePod(t, stranger)
	deletePod(t, reader)

	// The security half: which users the API server saw reading the
	// Secret. It cannot be checked without the audit log, and a security
	// test that did not run must not pass: no skip here, on any cluster.
	path := os.Getenv("SECRETFS_AUDIT_LOG")
	if path == "" {
		t.Fatal("SECRETFS_AUDIT_LOG is not set: the API server's audit log is needed to check which users read the Secret " +
			"(make e2e and make e2e-kind set it; on another cluster, enable the audit log and point SECRETFS_AUDIT_LOG at it)")
	}
	users := auditedSecretReads(t, path, ns, "db")
	t.Logf("reads of Secret %s/db by user and code: %v", ns, users)
	strangerUser, readerUser := "system:serviceaccount:"+ns+":stranger", "system:serviceaccount:"+ns+":reader"
	if users[strangerUser+" 403"] == 0 || users[readerUser+" 200"] == 0 {
		t.Fatalf("audit log lacks the refused read by %s or the read by %s: %v", strangerUser, readerUser, users)
	}
	for k := range users {
		if !strings.HasPrefix(k, strangerUser+" ") && !strings.HasPrefix(k, readerUser+" ") || k == strangerUser+" 200" || strings.HasSuffix(k, " 401") {
			t.Fatalf("unexpected read of the Secret: %s (all: %v)", k, users)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// createPodWithAttrs is createAppPodAs whose volume also sets the tokens
// attribute, as a pod author can.
func createPodWithAttrs(t *testing.T, ns, name, sa, class, tokens string) *corev1.Pod {
	t.Helper()
	spec := podSpec(sa, class)
	spec.Volumes[0].CSI.VolumeAttributes["csi.storage.k8s.io/serviceAccount.tokens"] = tokens
	pod, err := client.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// auditedSecretReads counts the audit events of gets and watches of Secret
// ns/name by "<user> <code>" (a fetch reads a Secret from the start of its
// watch, or GETs it).
func auditedSecretReads(t *testing.T, path, ns, name string) map[string]int {
	t.Helper()
	out := map[string]int{}
	eachAuditEvent(t, path, func(ev auditEvent) {
		r := ev.ObjectRef
		if ev.Stage != "ResponseComplete" && ev.Stage != "ResponseStarted" ||
			r.Resource != "secrets" || r.Namespace != ns || r.Name != name || ev.Verb != "get" && ev.Verb != "watch" || ev.ResponseStatus == nil {
			return
		}
		out[fmt.Sprintf("%s %d", ev.User.Username, ev.ResponseStatus.Code)]++
	})
	return out
}
