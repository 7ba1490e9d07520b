package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// defaultHealthAddr keeps /healthz off every interface but loopback unless
// the operator names an address: the manifests set the pod's own IP for
// kubelet's HTTP probes. `secretfs probe` checks it from the same host (a
// local agent under systemd, or by hand).
const defaultHealthAddr = "127.0.0.1:9808"

// runProbe asks the driver's /healthz and exits 0 when it answers 200.
func runProbe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("probe", "Check the driver's /healthz: exit 0 when healthy, 1 otherwise.", stdout)
	addr := fs.String("addr", defaultHealthAddr, "the driver's -health-addr")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the answer")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/healthz", nil)
	if err != nil {
		return fail(stderr, fs, 2, "-addr %q: %v", *addr, err)
	}
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		return fail(stderr, fs, 1, "%v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fail(stderr, fs, 1, "/healthz answered %s: %s", resp.Status, body)
	}
	fmt.Fprintf(stdout, "%s", body)
	return 0
}
