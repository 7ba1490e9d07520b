//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
)

// auditEvent is what the tests read of one event of the API server's audit
// log (SECRETFS_AUDIT_LOG; the suite's policy logs reads of Secrets,
// service-account token requests and the secrets-store resources).
type auditEvent struct {
	Stage     string                    `json:"stage"`
	Verb      string                    `json:"verb"`
	User      struct{ Username string } `json:"user"`
	SourceIPs []string                  `json:"sourceIPs"`
	ObjectRef *struct {
		Resource, Subresource, Namespace, Name string
	} `json:"objectRef"`
	ResponseStatus *struct{ Code int } `json:"responseStatus"`
}

// eachAuditEvent calls fn for every event of the audit log at path that
// names an object.
func eachAuditEvent(t *testing.T, path string, fn func(ev auditEvent)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev auditEvent
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.ObjectRef != nil {
			fn(ev)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}
