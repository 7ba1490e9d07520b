// Package integration runs the secretfs binary for real: the driver on a CSI
// socket, external providers on provider-protocol sockets, real tmpfs.
package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// secretfsBin is the binary under test, built once by TestMain.
var secretfsBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests mount tmpfs: run them as root")
		if os.Getenv("CI") != "" {
			return 1
		}
		return 0
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
