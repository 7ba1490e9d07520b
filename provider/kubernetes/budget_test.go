package kubernetes

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// A class naming many large Secrets is read at most 8 GETs at a time, and
// the responses stop at the volume's wire allowance: the fetch fails
// ResourceExhausted having read about the allowance, not every Secret.
func TestFetchStopsAtTheBudgetWithBoundedGETs(t *testing.T) {
	f := newFixture(t)
	f.serviceAccount(f.ns, "app")
	const n = 24
	var names, objects []string
	for i := range n {
		name := fmt.Sprintf("big-%d", i)
		f.putSecret(f.ns, name, map[string][]byte{"k": []byte(strings.Repeat("x", 500<<10))})
		names = append(names, name)
		objects = append(objects, "- {secretName: "+name+", path: "+name+"}")
	}
	f.grant(f.ns, "app", []string{"get"}, names...)
	req := f.request("app", strings.Join(objects, "\n"))
	req.Limits = provider.Limits{MaxBytes: 2 << 20, MaxFiles: 4096}
	_, err := f.p.Fetch(f.ctx(), req)
	wantCode(t, err, codes.ResourceExhausted, "--tmpfs-size")
	f.log.mu.Lock()
	maxInFlight, read, gets := f.log.maxInFlight, f.log.bodyBytes, f.log.gets
	f.log.mu.Unlock()
	t.Logf("%d GETs, at most %d at once, %d bytes read", gets, maxInFlight, read)
	if maxInFlight > maxConcurrentGets {
		t.Errorf("%d GETs in flight at once; the bound is %d", maxInFlight, maxConcurrentGets)
	}
	// The wire allowance, plus what the GETs in flight had read when it ran out.
	if allowance := req.Limits.WireBytes(); read > allowance+maxConcurrentGets*(64<<10) {
		t.Errorf("read %d bytes for an allowance of %d", read, allowance)
	}
	// Within the budget the same Secrets mount.
	req = f.request("app", strings.Join(objects[:3], "\n"))
	req.Limits = provider.Limits{MaxBytes: 2 << 20, MaxFiles: 4096}
	res, err := f.p.Fetch(f.ctx(), req)
	if err != nil || len(res.Files) != 3 {
		t.Fatalf("3 Secrets: %v", err)
	}
}
