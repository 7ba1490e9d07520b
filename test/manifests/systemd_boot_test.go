package manifests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/secretfs/secretfs/test/ci"
)

// The credential units as shipped, under a real systemd: a container booted
// with systemd-nspawn from the host's own /usr (--volatile: its root is a
// tmpfs, nothing of the host is written, no image and no network needed),
// secretfs-credentials.socket and .service, and app-credentials.service,
// which systemd starts with the credential it loads from the socket. A copy
// of that unit under another name is not allowed the credential: it gets an
// empty one and does not start (its ExecStartPre). The journal has both, and
// never the value.
func TestSystemdCredentialsBoot(t *testing.T) {
	if os.Geteuid() != 0 {
		ci.Missing(t, "booting a systemd container needs root")
	}
	nspawn, err := exec.LookPath("systemd-nspawn")
	if err != nil {
		ci.Missing(t, "systemd-nspawn is needed (Debian package systemd-container)")
	}
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		ci.Missing(t, "systemd is needed (Debian package systemd)")
	}
	dir := t.TempDir()
	bin, units, etc, out := filepath.Join(dir, "bin"), filepath.Join(dir, "units"), filepath.Join(dir, "etc"), filepath.Join(dir, "out")
	for _, d := range []string{bin, units, etc, out, filepath.Join(units, "app-credentials.service.d"), filepath.Join(units, "intruder.service.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(out, 0o777); err != nil { // the units run as dynamic users
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "secretfs"), "github.com/secretfs/secretfs/cmd/secretfs")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building secretfs: %v\n%s", err, b)
	}
	const value = "s3cret-from-secretfs"
	write := func(path, content string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	// The application: --password-file FILE.
	write(filepath.Join(bin, "app"), "#!/bin/sh\ncat \"$2\" > /out/got\n", 0o755)
	write(filepath.Join(etc, "app.yaml"), `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: app, namespace: default}
spec:
  provider: fake
  parameters:
    objects: |
      - objectName: db-password
        value: `+value+"\n", 0o644)
	for _, name := range []string{"secretfs-credentials.socket", "secretfs-credentials.service", "app-credentials.service"} {
		data, err := os.ReadFile(filepath.Join(deployDir, "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("/usr/local/bin/"), []byte("/opt/bin/"))
		write(filepath.Join(units, name), string(data), 0o644)
		if name == "app-credentials.service" {
			write(filepath.Join(units, "intruder.service"), string(data), 0o644)
		}
	}
	for _, name := range []string{"app-credentials.service.d", "intruder.service.d"} {
		write(filepath.Join(units, name, "out.conf"), "[Service]\nReadWritePaths=/out\n", 0o644)
	}
	// After both consumers: the journal, then power off.
	write(filepath.Join(units, "dump.service"), `[Unit]
After=app-credentials.service intruder.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'journalctl -b --no-pager > /out/journal 2>&1'
`, 0o644)
	write(filepath.Join(units, "test.target"), "[Unit]\nWants=secretfs-credentials.socket app-credentials.service intruder.service dump.service\n", 0o644)

	cmd := exec.Command("timeout", "180", nspawn, "--quiet", "--directory=/", "--volatile=yes", "--register=no", "--keep-unit",
		"--private-network", "--console=pipe", fmt.Sprintf("--machine=secretfs-test-%d", os.Getpid()),
		"--bind-ro="+units+":/etc/systemd/system", "--bind-ro="+etc+":/etc/secretfs", "--bind-ro="+bin+":/opt/bin",
		"--bind="+out+":/out", "--boot", "systemd.unit=test.target")
	boot, err := cmd.CombinedOutput()
	journal, jerr := os.ReadFile(filepath.Join(out, "journal"))
	if jerr != nil {
		t.Fatalf("the container wrote no journal (nspawn: %v):\n%s", err, boot)
	}
	j := string(journal)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\njournal:\n%s", append(args, j)...)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "got")); string(got) != value {
		fail("app-credentials.service read %q from its credential, want the class's value", got)
	}
	if !strings.Contains(j, `msg="credential served" unit=app-credentials.service id=db-password`) {
		fail("no log line of the credential served")
	}
	if !strings.Contains(j, `msg="credential refused" unit=intruder.service id=db-password`) {
		fail("no log line of the credential refused to intruder.service")
	}
	if !strings.Contains(j, "Failed to start intruder.service") {
		fail("intruder.service started without its credential")
	}
	if strings.Contains(j, value) {
		fail("the credential's value is in the journal")
	}
}
