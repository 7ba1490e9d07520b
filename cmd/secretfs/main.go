// Command secretfs is the secretfs CSI node driver, local agent and provider
// server in one binary. This package only parses flags and wires packages.
package main

import (
	"fmt"
	"io"
	"os"
)

const usage = `secretfs mounts secrets on a per-pod tmpfs.

Usage:
  secretfs driver   [flags]   run the CSI node plugin (DaemonSet)
  secretfs mount    [flags]   mount a SecretProviderClass at a directory and keep it fresh (local agent)
  secretfs run [flags] -- CMD  run a command with a SecretProviderClass's files only it can see (local agent)
  secretfs credentials [flags]  serve a SecretProviderClass's files to systemd units (LoadCredential=)
  secretfs provider [flags]   serve a built-in backend over the provider protocol
  secretfs probe    [flags]   check the driver's /healthz
  secretfs status   [flags]   show the volumes the driver on this node has mounted (never secret values)
  secretfs refresh  [flags]   refresh one class's or one pod's volumes on this node now
  secretfs version            print the version

Run "secretfs COMMAND -h" for the flags of a command.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case driverCmd:
		f, code, ok := parseDriverFlags(args[1:], stdout, stderr)
		if !ok {
			return code
		}
		return runDriver(f, stderr)
	case "mount":
		return runMount(args[1:], stdout, stderr)
	case "run":
		return runRun(args[1:], stdout, stderr)
	case "credentials":
		return runCredentials(args[1:], stdout, stderr)
	case "provider":
		return runProvider(args[1:], stdout, stderr)
	case "probe":
		return runProbe(args[1:], stdout, stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "refresh":
		return runRefresh(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "secretfs: unknown command %q; want driver, mount, run, credentials, provider, probe, status, refresh or version\n", args[0])
	return 2
}
