package fake

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/secretfs/secretfs/provider"
)

func TestSelectorDataFiles(t *testing.T) {
	dir := t.TempDir()
	f := New(Options{DataDir: dir})
	ns := filepath.Join(dir, "default")
	writeAtomic(t, filepath.Join(ns, "db-user"), "U")
	writeAtomic(t, filepath.Join(ns, "db-password"), "P")
	writeAtomic(t, filepath.Join(ns, "api-key"), "K")
	if err := os.Mkdir(filepath.Join(ns, "db-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(ns, "db-link")); err != nil {
		t.Fatal(err)
	}
	req := request(objects("- {objectNamePrefix: db-, filePermission: '0400'}\n- {objectName: api-key}\n"))
	files := func() string {
		t.Helper()
		res := mustFetch(t, f, req)
		out := ""
		for _, file := range res.Files {
			out += fmt.Sprintf("%s=%s(%o) ", file.Path, file.Contents, file.Mode)
		}
		return out
	}
	if got, want := files(), "api-key=K(644) db-password=P(400) db-user=U(400) "; got != want {
		t.Errorf("files %q, want %q (no directory, no symbolic link)", got, want)
	}
	// Rotation picks up an added and a removed file.
	writeAtomic(t, filepath.Join(ns, "db-host"), "H")
	if err := os.Remove(filepath.Join(ns, "db-user")); err != nil {
		t.Fatal(err)
	}
	if got, want := files(), "api-key=K(644) db-host=H(400) db-password=P(400) "; got != want {
		t.Errorf("after adding db-host and removing db-user: %q, want %q", got, want)
	}
	// Without a data directory a selector selects nothing.
	if res := mustFetch(t, New(Options{}), request(objects("- {objectNamePrefix: db-}\n"))); len(res.Files) != 0 {
		t.Errorf("%d files without a data directory", len(res.Files))
	}
}

func TestSelectorBoundsAndCollisions(t *testing.T) {
	dir := t.TempDir()
	f := New(Options{DataDir: dir})
	for i := range 5 {
		writeAtomic(t, filepath.Join(dir, "default", fmt.Sprintf("db-%d", i)), "v")
	}
	req := request(objects("- {objectNamePrefix: db-}\n- {objectName: x, value: y}\n"))
	req.Limits = provider.Limits{MaxFiles: 5}
	_, err := f.Fetch(context.Background(), req)
	if provider.CodeOf(err) != codes.ResourceExhausted || !contains(err, "--max-files") {
		t.Errorf("over --max-files: %v", err)
	}
	if n := f.ObjectFetches("default", "db-0"); n != 0 {
		t.Errorf("%d reads of a data file before the selection was refused", n)
	}
	for in, want := range map[string]string{
		"- {objectNamePrefix: db-}\n- {objectName: other, objectAlias: db-1, value: y}\n": `both write file "db-1"`,
		"- {objectNamePrefix: db-}\n- {objectNamePrefix: db-3}\n":                         `objectNamePrefix db- and objectNamePrefix db-3 both write file "db-3"`,
		"- {objectNamePrefix: db-}\n- {objectName: o, objectAlias: db-2/x, value: y}\n":   `a directory of object o's file "db-2/x"`,
	} {
		_, err := f.Fetch(context.Background(), request(objects(in)))
		if provider.CodeOf(err) != codes.InvalidArgument || !contains(err, want) {
			t.Errorf("%q: %v, want InvalidArgument with %q", in, err, want)
		}
	}
	for _, in := range []string{
		"- {objectNamePrefix: db-, value: x}\n",
		"- {objectNamePrefix: db-, objectName: a}\n",
		"- {objectNamePrefix: ../x}\n",
		"- {objectNamePrefix: .tmp}\n",
	} {
		if _, err := parseObjects(in); provider.CodeOf(err) != codes.InvalidArgument {
			t.Errorf("%q: %v, want InvalidArgument", in, err)
		}
	}
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }
