package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tenantClass is a fake-backend class in team-a with extra parameters
// (YAML lines at the parameters' indentation).
func tenantClass(name, objects, params string) string {
	return fmt.Sprintf("apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: %s\n  namespace: team-a\nspec:\n  provider: fake\n  parameters:\n    objects: |\n%s%s", name, objects, params)
}

// What a tenant who may only write classes and pods in its own namespace
// tried against the node's driver (issue 21), each against the real binary
// in a real memory cgroup with the shipped limit: the driver refuses each
// with the code a person can act on, is never OOM-killed, stays under its
// limit, lets an unpublish through while a publish of the same volume is
// stuck, and stops on SIGTERM within its grace period whatever a class is
// doing.
func TestTenantComputationInShippedMemoryLimit(t *testing.T) {
	limit := shippedMemoryLimit(t)
	cg := newMemcg(t, limit)
	dir := t.TempDir()
	classDir, dataDir := filepath.Join(dir, "classes"), filepath.Join(dir, "data")
	mkdir(t, classDir)
	mkdir(t, filepath.Join(dataDir, "team-a"))
	t.Cleanup(func() { unmountAllUnder(dir) })

	// Data files of the fake backend are at most 1 MiB: one anchored 900 KiB.
	// A template of about 3 KiB: build a MiB-sized variable, print it 300 times.
	printer := "{{ $s := .x }}{{ $s = print" + strings.Repeat(" $s", 16) + " }}{{ print" + strings.Repeat(" $s", 300) + " }}"
	writeFile(t, filepath.Join(classDir, "print.yaml"), tenantClass("print", "      - {objectName: x, generate: 65536}\n",
		"    secretfs.dev/hideObjects: \"true\"\n    secretfs.dev/templates: |\n      - path: out\n        template: '"+printer+"'\n"))
	// Compare two MiB-sized strings in an endless loop.
	comparer := "{{ $s := .x }}{{ $s = print" + strings.Repeat(" $s", 16) + " }}{{ range 1000000000 }}{{ if eq $s $s }}{{ end }}{{ end }}"
	writeFile(t, filepath.Join(classDir, "compare.yaml"), tenantClass("compare", "      - {objectName: x, generate: 65536}\n",
		"    secretfs.dev/hideObjects: \"true\"\n    secretfs.dev/templates: |\n      - path: out\n        template: '"+comparer+"'\n"))
	// The tenant's own secret value: one anchored scalar and 5000 aliases.
	writeFile(t, filepath.Join(dataDir, "team-a", "doc"), "big: &b "+strings.Repeat("x", 900<<10)+"\nlist: ["+strings.Repeat("*b, ", 5000)+"*b]\n")
	writeFile(t, filepath.Join(classDir, "alias.yaml"), tenantClass("alias", "      - {objectName: doc, value: unused, keyPath: list}\n", ""))
	// A class parameter of dense YAML within the API server's object limit.
	writeFile(t, filepath.Join(classDir, "dense.yaml"), tenantClass("dense", "      ["+strings.Repeat("a,", 700<<10)+"a]\n", ""))
	// One template of 60 KiB, anchored, and 63 more files aliasing it: 63
	// KiB of YAML that decodes to 3.8 MiB of template source (before, its
	// parse took 336 MiB and OOM-killed the driver).
	var aliased strings.Builder
	aliased.WriteString("      - path: a0\n        template: &x '" + strings.Repeat("{{1}}", 60<<10/5) + "'\n")
	for i := 1; i < 64; i++ {
		fmt.Fprintf(&aliased, "      - path: a%d\n        template: *x\n", i)
	}
	writeFile(t, filepath.Join(classDir, "tmplalias.yaml"), tenantClass("tmplalias", "      - {objectName: x, value: v}\n",
		"    secretfs.dev/templates: |\n"+aliased.String()))
	writeFile(t, filepath.Join(classDir, "slow.yaml"), tenantClass("slow", "      - {objectName: x, value: v}\n", "    latency: 10m\n"))

	csiSock := filepath.Join(dir, "csi.sock")
	drv := cg.startIn(t, "driver", "--endpoint", "unix://"+csiSock, "--node-id", "n1", "--class-dir", classDir,
		"--kubelet-dir", dir, "--provider-dir", filepath.Join(dir, "providers"), "--health-addr", "", "--metrics-addr", "",
		"--backends", "fake", "--fake-data-dir", dataDir)
	node := nodeClient(t, csiSock)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for class, want := range map[string]codes.Code{
		"print":     codes.ResourceExhausted,
		"compare":   codes.ResourceExhausted,
		"alias":     codes.ResourceExhausted,
		"dense":     codes.ResourceExhausted,
		"tmplalias": codes.InvalidArgument,
	} {
		for i := range 3 { // kubelet retries
			start := time.Now()
			_, err := node.NodePublishVolume(ctx, publishRequest(class, filepath.Join(dir, fmt.Sprint(class, i))))
			if status.Code(err) != want {
				t.Errorf("%s: %v, want %s", class, err, want)
			}
			if i == 0 {
				t.Logf("%s refused in %v: %v", class, time.Since(start), status.Convert(err).Message())
			}
			if !alive(drv) {
				t.Fatalf("the driver died on class %s (OOM kills %d)", class, cg.oomKills(t))
			}
		}
	}
	if n := cg.oomKills(t); n != 0 {
		t.Fatalf("%d OOM kills", n)
	}
	if peak := cg.peak(t); peak >= limit {
		t.Fatalf("cgroup peak %d reached the limit %d", peak, limit)
	}
	t.Logf("cgroup peak %d MiB of %d MiB", cg.peak(t)>>20, limit>>20)

	// A publish stuck in its backend: the unpublish of the same volume
	// cancels it and succeeds within a second.
	slow := publishRequest("slow", filepath.Join(dir, "slow"))
	published := make(chan error, 1)
	go func() { _, err := node.NodePublishVolume(ctx, slow); published <- err }()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	unpublishID(t, node, slow.VolumeId, slow.TargetPath)
	if d := time.Since(start); d > time.Second {
		t.Errorf("unpublish during a stuck publish took %v", d)
	}
	if err := <-published; status.Code(err) != codes.Canceled {
		t.Errorf("the stuck publish: %v, want Canceled", err)
	}
	if _, err := os.Lstat(slow.TargetPath); !os.IsNotExist(err) {
		t.Errorf("target of the cancelled publish: %v", err)
	}

	// SIGTERM with a publish stuck: the driver stops within its grace period.
	go func() { _, _ = node.NodePublishVolume(ctx, publishRequest("slow", filepath.Join(dir, "slow2"))) }()
	time.Sleep(500 * time.Millisecond)
	start = time.Now()
	if err := drv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = drv.Wait(); close(exited) }()
	select {
	case <-exited:
		t.Logf("stopped %v after SIGTERM", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("the driver did not stop within 5 s of SIGTERM")
	}
}
