package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/secretfs/secretfs/test/ci"
)

// A bad flag or argument is one line on stderr and exit code 2.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage"},
		{[]string{"nope"}, `unknown command "nope"`},
		{[]string{"driver", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"driver", "--tmpfs-size", "lots"}, "not a size like 8Mi"},
		{[]string{"driver", "--tmpfs-size", "-1Mi"}, "must be positive"},
		{[]string{"driver", "--log-format", "xml", "--class-dir", "."}, "-log-format must be text or json"},
		{[]string{"driver", "--node-id", "", "--class-dir", "."}, "-node-id is required"},
		{[]string{"driver", "extra"}, `unexpected argument "extra"`},
		{[]string{"driver", "--class-dir", ".", "--max-procs", "-1"}, "-max-procs must be 0 or more, not -1"},
		{[]string{"driver", "--events=maybe"}, `invalid boolean value "maybe" for -events`},
		{[]string{"refresh", "--class", "app"}, "give -namespace and exactly one of -class and -pod"},
		{[]string{"refresh", "--namespace", "shop", "--class", "app", "--pod", "web"}, "exactly one of -class and -pod"},
		{[]string{"mount"}, "-target, and -class or -kubeconfig with -class-name, are required"},
		{[]string{"driver", "--class-dir", ".", "--pprof-addr", ":6060"}, `-pprof-addr ":6060": want a loopback address`},
		{[]string{"driver", "--class-dir", ".", "--pprof-addr", "0.0.0.0:6060"}, `"0.0.0.0" is not a loopback address`},
		{[]string{"driver", "--class-dir", ".", "--pprof-addr", "192.0.2.1:6060"}, `"192.0.2.1" is not a loopback address`},
		{[]string{"driver", "--class-dir", ".", "--pprof-addr", "tcp://127.0.0.1:6060"}, `want a loopback address`},
		{[]string{"driver", "--class-dir", ".", "--pprof-addr", "unix://pprof.sock"}, `three slashes`},
		{[]string{"run", "--class", "c.yaml"}, "no command"},
		{[]string{"run", "--", "true"}, "-class, or -kubeconfig with -class-name, is required"},
		{[]string{"run", "--class", "c.yaml", "--on-change", "reload", "--", "true"}, "-on-change: \"reload\" is not none, restart or signal:NAME"},
		{[]string{"run", "--class", "c.yaml", "--env", "1=x", "--", "true"}, "not an environment variable name"},
		{[]string{"run", "--class", "c.yaml", "--gid", "0", "--", "true"}, "-gid needs -uid"},
		{[]string{"run", "--class", "c.yaml", "--mask-base64", "--", "true"}, "-mask-base64 needs -mask"},
		{[]string{"run", "--class", "c.yaml", "--mode", "0644x", "--", "true"}, `-mode "0644x" is not an octal file mode`},
		{[]string{"mount", "--class", "c.yaml", "--target", "t", "--mode", "1777"}, `-mode "1777" is not an octal file mode`},
		{[]string{"mount", "--class", "c.yaml", "--target", "t", "--gid", "no-such-group-here"}, `-gid "no-such-group-here": no such group`},
		{[]string{"run", "--class", "c.yaml", "--uid", "no-such-user-here", "--", "true"}, `-uid "no-such-user-here": no such user`},
		{[]string{"credentials", "--socket", "/run/x.sock"}, "-class, or -kubeconfig with -class-name, is required"},
		{[]string{"credentials", "--class", "c.yaml", "--allow", "db"}, `"db" is not ID=unit[,unit...]`},
		{[]string{"credentials", "--class", "c.yaml", "--allow", "db=app"}, `"app" is not a unit name or pattern`},
		{[]string{"credentials", "--class", "c.yaml", "--allow", "..data=app.service"}, `"..data" is not a credential ID`},
		{[]string{"credentials", "--class", "c.yaml", "--allowed-only"}, "-allowed-only without any -allow would serve nothing"},
		{[]string{"credentials", "--class", "c.yaml", "--max-connections", "8", "--max-open", "4"}, "want 0 < connections (8) <= open connections (4)"},
		{[]string{"credentials", "--class", "c.yaml", "--timeout", "0s"}, "the timeout must be positive"},
		{[]string{"provider", "--endpoint", "unix:///tmp/x.sock"}, "-backend and -endpoint are required"},
		{[]string{"provider", "--backend", "vault", "--endpoint", "unix:///tmp/x.sock"}, `-backend "vault" is not a built-in backend`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
		msg := stderr.String()
		if !strings.Contains(msg, tc.want) {
			t.Errorf("%v: stderr %q does not contain %q", tc.args, msg, tc.want)
		}
		if tc.args != nil && strings.Count(strings.TrimSpace(msg), "\n") != 0 {
			t.Errorf("%v: error is not one line: %q", tc.args, msg)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"driver", "-h"}, {"mount", "-h"}, {"run", "-h"}, {"provider", "-h"}, {"version"}} {
		var stdout bytes.Buffer
		if code := run(args, &stdout, io.Discard); code != 0 || stdout.Len() == 0 {
			t.Errorf("%v: exit %d, output %q", args, code, stdout.String())
		}
		if n := strings.Count(stdout.String(), "Usage"); len(args) > 1 && args[1] == "-h" && n != 1 {
			t.Errorf("%v: usage printed %d times, want once", args, n)
		}
	}
	// Flags are offered only by the commands that use them.
	for _, tc := range []struct {
		cmd  string
		flag string
		want bool
	}{
		{"driver", "-provider-dir", true},
		{"mount", "-provider-dir", true},
		{"run", "-provider-dir", true},
		{"provider", "-provider-dir", false},
		{"provider", "-provider-timeout", false},
	} {
		var stdout bytes.Buffer
		run([]string{tc.cmd, "-h"}, &stdout, io.Discard)
		if got := strings.Contains(stdout.String(), tc.flag+" "); got != tc.want {
			t.Errorf("secretfs %s -h lists %s: %v, want %v", tc.cmd, tc.flag, got, tc.want)
		}
	}
}

// The local agent, run by someone other than root, says why in one line.
func TestMountNotRoot(t *testing.T) {
	if os.Getenv("SECRETFS_TEST_MOUNT_AS_NOBODY") == "1" {
		os.Exit(run([]string{"mount", "--class", os.Args[len(os.Args)-2], "--target", os.Args[len(os.Args)-1]}, os.Stdout, os.Stderr))
	}
	if os.Geteuid() != 0 {
		ci.Missing(t, "TestMountNotRoot starts a process as another user and must run as root")
	}
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} { // nobody must reach the binary
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "secretfs.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	class := filepath.Join(dir, "class.yaml")
	if err := os.WriteFile(class, []byte("apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {name: c}\nspec: {provider: fake, parameters: {objects: '- {objectName: a, value: b}'}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestMountNotRoot$", class, filepath.Join(dir, "target"))
	// Under -cover the child writes coverage data; give it a place nobody may write.
	cover := filepath.Join(dir, "cover")
	if err := os.Mkdir(cover, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cover, 0o777); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "SECRETFS_TEST_MOUNT_AS_NOBODY=1", "GOCOVERDIR="+cover)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	exit, ok := err.(*exec.ExitError)
	if !ok || exit.ExitCode() != 1 {
		t.Fatalf("want exit 1, got %v (stderr %q)", err, stderr.String())
	}
	msg := strings.TrimSpace(stderr.String())
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "must run as root") || !strings.Contains(msg, "uid 65534") {
		t.Fatalf("want one line saying root is needed, got %q", msg)
	}
}

// A kubeconfig given explicitly must load, even when classes come from files.
func TestDriverBadKubeconfig(t *testing.T) {
	var stderr bytes.Buffer
	missing := filepath.Join(t.TempDir(), "missing.kubeconfig")
	code := run([]string{"driver", "--class-dir", t.TempDir(), "--kubeconfig", missing, "--health-addr", "", "--metrics-addr", "", "--max-procs", "0"}, io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "missing.kubeconfig") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

// pprof is served only where nobody else can reach it: a loopback address
// or a unix socket only root can open.
func TestPprofListener(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0", "127.1.2.3:0"} {
		ln, err := pprofListener(addr)
		if err != nil {
			if strings.Contains(addr, "::1") && strings.Contains(err.Error(), "cannot assign") {
				continue // no IPv6 loopback on this host
			}
			t.Errorf("%s: %v", addr, err)
			continue
		}
		ln.Close()
	}
	sock := filepath.Join(t.TempDir(), "pprof.sock")
	ln, err := pprofListener("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pprof socket %v, %v; want mode 0600", fi, err)
	}
	go http.Serve(ln, pprofHandler())
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := client.Get("http://localhost/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("pprof over the socket: %s", resp.Status)
	}
}

// The local agent may use the VM's managed identity for every class by
// default; the driver for none.
func TestLocalAgentManagedIdentityDefault(t *testing.T) {
	for cmd, want := range map[string]bool{"mount": true, "run": true, "driver": false} {
		var stdout bytes.Buffer
		run([]string{cmd, "-h"}, &stdout, io.Discard)
		if got := strings.Contains(stdout.String(), `all (default "*")`); got != want {
			t.Errorf("secretfs %s: managed identity for all classes by default: %v, want %v", cmd, got, want)
		}
	}
}
