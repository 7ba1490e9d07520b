package kubecore

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// TestRequests checks the requests the client sends: paths, verbs, query
// parameters and content types, as client-go's generated core/v1 client
// sends them.
func TestRequests(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Content-Type")+" "+strings.Split(r.Header.Get("Accept"), ",")[0])
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK) // an empty stream: the test stops it
			return
		}
		if strings.Contains(r.URL.Path, "/events") {
			var e corev1.Event
			if len(body) > 0 && r.Method != http.MethodPatch {
				if err := json.Unmarshal(body, &e); err != nil {
					t.Errorf("event body: %v", err)
				}
			}
			e.APIVersion, e.Kind = "v1", "Event"
			json.NewEncoder(w).Encode(&e)
			return
		}
		json.NewEncoder(w).Encode(&corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "team-a"}, Data: map[string][]byte{"k": []byte("v")}})
	}))
	defer srv.Close()
	c, err := NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sec, err := c.Secrets("team-a").Get(ctx, "db", metav1.GetOptions{ResourceVersion: "7"})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Name != "db" || string(sec.Data["k"]) != "v" {
		t.Fatalf("decoded %+v", sec)
	}
	if _, err := c.Secrets("team-a").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db"}}, metav1.CreateOptions{FieldManager: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Secrets("team-a").Patch(ctx, "db", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{FieldManager: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListSecrets(ctx, "team-a", metav1.ListOptions{LabelSelector: "app=web", Limit: 50}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pods("team-a").Get(ctx, "web-0", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	timeout := int64(30)
	w, err := c.Secrets("team-a").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=db", ResourceVersion: "7", TimeoutSeconds: &timeout})
	if err != nil {
		t.Fatal(err)
	}
	w.Stop()
	events := c.Events("team-b")
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e1", Namespace: "team-b"}, Reason: "R"}
	if _, err := events.Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Patch(ctx, "e1", types.MergePatchType, []byte(`{"count":2}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"GET /api/v1/namespaces/team-a/secrets/db?resourceVersion=7  application/vnd.kubernetes.protobuf",
		"POST /api/v1/namespaces/team-a/secrets?fieldManager=m application/vnd.kubernetes.protobuf application/vnd.kubernetes.protobuf",
		"PATCH /api/v1/namespaces/team-a/secrets/db?fieldManager=m application/merge-patch+json application/vnd.kubernetes.protobuf",
		"GET /api/v1/namespaces/team-a/secrets?labelSelector=app%3Dweb&limit=50  application/vnd.kubernetes.protobuf",
		"GET /api/v1/namespaces/team-a/pods/web-0  application/vnd.kubernetes.protobuf",
		"GET /api/v1/namespaces/team-a/secrets?fieldSelector=metadata.name%3Ddb&resourceVersion=7&timeout=30s&timeoutSeconds=30&watch=true  application/vnd.kubernetes.protobuf",
		"POST /api/v1/namespaces/team-b/events application/json application/json",
		"PATCH /api/v1/namespaces/team-b/events/e1 application/merge-patch+json application/json",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
