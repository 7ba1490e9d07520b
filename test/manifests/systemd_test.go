package manifests

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/secretfs/secretfs/test/ci"
)

var systemdUnits = []string{"secretfs-mount.service", "secretfs-run.service", "secretfs-credentials.service"}

// systemdOtherUnits are verified too; they are not secretfs services (the
// socket of secretfs-credentials.service, and an example consumer of it).
var systemdOtherUnits = []string{"secretfs-credentials.socket", "app-credentials.service"}

// The shipped units parse: systemd-analyze verify (Debian's systemd package)
// with the binaries they start stubbed, and not one warning.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		ci.Missing(t, "systemd-analyze is needed (Debian package systemd)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"secretfs", "app"} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var units []string
	for _, name := range append(systemdUnits, systemdOtherUnits...) {
		data, err := os.ReadFile(filepath.Join(deployDir, "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		unit := filepath.Join(dir, name)
		if err := os.WriteFile(unit, bytes.ReplaceAll(data, []byte("/usr/local/bin/"), []byte(bin+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, unit)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// unitKeys returns the [Service] settings of a unit, by key.
func unitKeys(t *testing.T, name string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(deployDir, "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			keys[k] = v
		}
	}
	return keys
}

// The sandboxing the units promise: both without new privileges and with a
// capability set of mounting's needs; run with a read-only system and a
// private /tmp; mount without any option that would give it a mount
// namespace of its own, where its mount would never reach the host.
func TestSystemdUnitsSandbox(t *testing.T) {
	for _, name := range systemdUnits {
		keys := unitKeys(t, name)
		if keys["NoNewPrivileges"] != "yes" || !strings.Contains(keys["CapabilityBoundingSet"], "CAP_SYS_ADMIN") ||
			strings.Contains(keys["CapabilityBoundingSet"], "CAP_NET_ADMIN") || keys["LimitCORE"] != "0" {
			t.Errorf("%s: NoNewPrivileges %q, CapabilityBoundingSet %q, LimitCORE %q", name, keys["NoNewPrivileges"], keys["CapabilityBoundingSet"], keys["LimitCORE"])
		}
	}
	run := unitKeys(t, "secretfs-run.service")
	if run["ProtectSystem"] != "strict" || run["PrivateTmp"] != "yes" || run["ProtectHome"] != "yes" || !strings.Contains(run["ExecStart"], " run ") {
		t.Errorf("secretfs-run.service: ProtectSystem %q PrivateTmp %q ProtectHome %q ExecStart %q", run["ProtectSystem"], run["PrivateTmp"], run["ProtectHome"], run["ExecStart"])
	}
	creds := unitKeys(t, "secretfs-credentials.service")
	if creds["ProtectSystem"] != "strict" || creds["PrivateTmp"] != "yes" || creds["RestrictNamespaces"] != "mnt" || !strings.Contains(creds["ExecStart"], " credentials ") {
		t.Errorf("secretfs-credentials.service: ProtectSystem %q PrivateTmp %q RestrictNamespaces %q ExecStart %q", creds["ProtectSystem"], creds["PrivateTmp"], creds["RestrictNamespaces"], creds["ExecStart"])
	}
	if app := unitKeys(t, "app-credentials.service"); app["LoadCredential"] != "db-password:/run/secretfs/credentials.sock" {
		t.Errorf("app-credentials.service: LoadCredential %q", app["LoadCredential"])
	}
	mount := unitKeys(t, "secretfs-mount.service")
	for _, k := range []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
		"ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "BindPaths"} {
		if _, ok := mount[k]; ok {
			t.Errorf("secretfs-mount.service sets %s, which gives it a mount namespace: its mount would not reach the host", k)
		}
	}
}
