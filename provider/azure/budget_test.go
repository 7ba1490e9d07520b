package azure

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// Key Vault answers are charged to the volume's budget as they are read:
// a class whose objects exceed it fails ResourceExhausted, and objects past
// the file limit are refused before any request.
func TestFetchStopsAtTheBudget(t *testing.T) {
	// twelve 20 KiB secrets in a vault of their own.
	setup := func() (*testEnv, *provider.Request) {
		e := newTestEnv(t, nil)
		var objects []string
		for i := range 12 {
			name := fmt.Sprintf("s%d", i)
			e.vault.SetSecret(name, strings.Repeat("v", 20<<10), "")
			objects = append(objects, "- objectName: "+name+"\n  objectType: secret")
		}
		return e, e.spRequest(strings.Join(objects, "\n") + "\n")
	}
	e, req := setup()
	req.Limits = provider.Limits{MaxBytes: 64 << 10, MaxFiles: 100}
	_, err := e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.ResourceExhausted, "--tmpfs-size")

	// A fresh vault: requests the fetch above still had in flight when it
	// gave up must not count against this one.
	e, req = setup()
	req.Limits = provider.Limits{MaxBytes: 8 << 20, MaxFiles: 5}
	before := e.fake.Count("vault.secrets.get")
	_, err = e.p.Fetch(context.Background(), req)
	wantCode(t, err, codes.ResourceExhausted, "12 objects", "--max-files")
	if n := e.fake.Count("vault.secrets.get"); n != before {
		t.Fatalf("%d Key Vault requests for a class over the file limit", n-before)
	}

	req.Limits = provider.Limits{MaxBytes: 1 << 20, MaxFiles: 100}
	if res := e.fetch(t, req); len(res.Files) != 12 {
		t.Fatalf("%d files", len(res.Files))
	}
}
