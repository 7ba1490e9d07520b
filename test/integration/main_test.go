// Package integration runs the secretfs binary for real: the driver on a CSI
// socket, external providers on provider-protocol sockets, real tmpfs.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/secretfs/secretfs/test/ci"
)

// secretfsBin is the binary under test, built once by TestMain.
var secretfsBin string

// missing says which prerequisite is missing; TestMain then runs only
// TestPrerequisites, so the package reports a skip (a failure in CI) rather
// than "ok" with nothing run.
var missing string

func TestPrerequisites(t *testing.T) {
	if missing != "" {
		ci.Missing(t, "%s", missing)
	}
}

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	if os.Geteuid() != 0 {
		missing = "integration tests mount tmpfs: run them as root"
		return ci.RunOnly(m, "TestPrerequisites")
	}
	dir, err := os.MkdirTemp("", "secretfs-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	secretfsBin = filepath.Join(dir, "secretfs")
	build := exec.Command("go", "build", "-o", secretfsBin, "github.com/secretfs/secretfs/cmd/secretfs")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building secretfs:", err)
		return 1
	}
	return m.Run()
}
