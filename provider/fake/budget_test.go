package fake

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

// bigClass is the class of the finding: 1,024 objects of 64 KiB generated
// each (64 MiB), about 40 KB of YAML.
func bigClass() string {
	var b strings.Builder
	for i := range 1024 {
		fmt.Fprintf(&b, "- {objectName: o%d, generate: 65536}\n", i)
	}
	return b.String()
}

// The fake stops at the volume's byte budget before it generates more: the
// fetch fails ResourceExhausted having allocated about the budget, not the
// 64 MiB the class asks for.
func TestGenerateStopsAtTheBudget(t *testing.T) {
	f := New(Options{})
	req := request(objects(bigClass()))
	req.Limits = provider.Limits{MaxBytes: 8 << 20, MaxFiles: 4096}
	// Parse once outside the measurement: the YAML is the class's, not the fetch's.
	if _, err := f.parseObjects(req.Parameters["objects"]); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := f.Fetch(context.Background(), req)
	runtime.ReadMemStats(&after)
	if provider.CodeOf(err) != codes.ResourceExhausted || res != nil {
		t.Fatalf("want ResourceExhausted and no result, got %v", err)
	}
	if !strings.Contains(err.Error(), "8388608 bytes") || !strings.Contains(err.Error(), "--tmpfs-size") {
		t.Fatalf("message does not name the limit and its flag: %v", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 12<<20 {
		t.Fatalf("the fetch allocated %d bytes for a budget of 8 MiB", alloc)
	}
	// Objects after the budget ran out were never read.
	if n := f.ObjectFetches("default", "o1023"); n != 0 {
		t.Fatalf("last object read %d times", n)
	}
	// Within the budget the same objects mount.
	req.Parameters = objects("- {objectName: a, generate: 65536}\n- {objectName: b, generate: 65536}\n")
	if res := mustFetch(t, f, req); len(res.Files) != 2 {
		t.Fatalf("%d files", len(res.Files))
	}
}

func TestFileCountAndDataFilesAreCharged(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "default"), 0o755)
	os.WriteFile(filepath.Join(dir, "default", "big"), make([]byte, 2000), 0o600)
	f := New(Options{DataDir: dir})
	req := request(objects("- {objectName: big}\n"))
	req.Limits = provider.Limits{MaxBytes: 1000, MaxFiles: 10}
	if _, err := f.Fetch(context.Background(), req); provider.CodeOf(err) != codes.ResourceExhausted {
		t.Fatalf("data file over the budget: %v", err)
	}
	req = request(objects("- {objectName: a, value: x}\n- {objectName: b, value: y}\n- {objectName: c, value: z}\n"))
	req.Limits = provider.Limits{MaxBytes: 1000, MaxFiles: 2}
	if _, err := f.Fetch(context.Background(), req); provider.CodeOf(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "--max-files") {
		t.Fatalf("3 files for a limit of 2: %v", err)
	}
}
