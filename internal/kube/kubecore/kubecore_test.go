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
	sink := c.EventSink()
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e1", Namespace: "team-b"}, Reason: "R"}
	if _, err := sink.Create(ev); err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Update(ev); err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Patch(ev, []byte(`{"count":2}`)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"GET /api/v1/namespaces/team-a/secrets/db?resourceVersion=7  application/vnd.kubernetes.protobuf",
		"POST /api/v1/namespaces/team-a/secrets?fieldManager=m application/vnd.kubernetes.protobuf application/vnd.kubernetes.protobuf",
		"POST /api/v1/namespaces/team-b/events application/json application/json",
		"PUT /api/v1/namespaces/team-b/events/e1 application/json application/json",
		"PATCH /api/v1/namespaces/team-b/events/e1 application/strategic-merge-patch+json application/json",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
