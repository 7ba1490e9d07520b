package driver

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An external provider's error names the provider once (not
// `provider "x": provider "x": ...`), keeps the provider's code, and the
// driver's "publish failed" log line names the pod.
func TestExternalProviderErrorNamesProviderOnce(t *testing.T) {
	x := newExtEnv(t, nil)
	x.serve("vault", true)
	x.class("app", "vault", map[string]string{"objects": "- objectName: missing\n"})
	err := x.publishPod("vol-1", x.target("v"), "app", "uid-1")
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.Unknown || strings.Count(msg, `provider "vault"`) != 1 ||
		!strings.Contains(msg, `class "app" in namespace "team-a", provider "vault": Failed to fetch secret missing`) {
		t.Fatalf("publish: %v", err)
	}
	var line map[string]any
	for l := range strings.Lines(x.logs.String()) {
		if strings.Contains(l, `"publish failed"`) {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line == nil || line["pod"] != "pod-uid-1" || line["namespace"] != "team-a" {
		t.Fatalf("publish failed log line %v, want the pod's name and namespace", line)
	}
}
