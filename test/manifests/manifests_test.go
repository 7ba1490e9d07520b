package manifests

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/driver/budget"
)

const deployDir = "../../deploy"

// docs returns the YAML documents of a manifest file.
func docs(t *testing.T, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for doc := range strings.SplitSeq(string(data), "\n---\n") {
		if strings.TrimSpace(doc) != "" {
			out = append(out, []byte(doc))
		}
	}
	return out
}

// decode strictly decodes the only document of name into out.
func decode(t *testing.T, name string, out any) {
	t.Helper()
	d := docs(t, name)
	if len(d) != 1 {
		t.Fatalf("%s has %d documents, want 1", name, len(d))
	}
	if err := yaml.UnmarshalStrict(d[0], out); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

func TestCSIDriver(t *testing.T) {
	var d storagev1.CSIDriver
	decode(t, "csidriver.yaml", &d)
	if d.Name != "csi.secretfs.dev" {
		t.Errorf("name %q", d.Name)
	}
	s := d.Spec
	if s.AttachRequired == nil || *s.AttachRequired || s.PodInfoOnMount == nil || !*s.PodInfoOnMount ||
		s.RequiresRepublish == nil || !*s.RequiresRepublish {
		t.Errorf("attachRequired/podInfoOnMount/requiresRepublish = %v/%v/%v", s.AttachRequired, s.PodInfoOnMount, s.RequiresRepublish)
	}
	if !slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}) {
		t.Errorf("volumeLifecycleModes %v, want only Ephemeral", s.VolumeLifecycleModes)
	}
	var audiences []string
	for _, r := range s.TokenRequests {
		audiences = append(audiences, r.Audience)
	}
	// kubelet requests each audience for every pod: only the kubernetes
	// backend's by default (components/azure-workload-identity adds Azure's).
	if !slices.Equal(audiences, []string{""}) {
		t.Errorf("token audiences %q, want only the kubernetes backend's", audiences)
	}
}

func TestRBACHasNoSecretAccess(t *testing.T) {
	var kinds []string
	for _, doc := range docs(t, "rbac.yaml") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, meta.Kind)
		var obj any
		switch meta.Kind {
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		case "ClusterRole":
			role := &rbacv1.ClusterRole{}
			obj = role
			defer func() {
				// Read classes; post events on pods (create, and patch to
				// count repeats). Nothing else, Secrets least of all.
				want := []rbacv1.PolicyRule{
					{APIGroups: []string{"secrets-store.csi.x-k8s.io"}, Resources: []string{"secretproviderclasses"}, Verbs: []string{"get", "list", "watch"}},
					{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
				}
				if !slices.EqualFunc(role.Rules, want, func(a, b rbacv1.PolicyRule) bool {
					return slices.Equal(a.APIGroups, b.APIGroups) && slices.Equal(a.Resources, b.Resources) && slices.Equal(a.Verbs, b.Verbs) &&
						len(a.ResourceNames) == 0 && len(a.NonResourceURLs) == 0
				}) {
					t.Errorf("ClusterRole rules %+v, want exactly %+v", role.Rules, want)
				}
			}()
		default:
			t.Fatalf("unexpected kind %q in rbac.yaml", meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("rbac.yaml %s: %v", meta.Kind, err)
		}
	}
	if !slices.Equal(kinds, []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}) {
		t.Errorf("rbac.yaml kinds %v", kinds)
	}
}

func TestDaemonSet(t *testing.T) {
	var ds appsv1.DaemonSet
	decode(t, "daemonset.yaml", &ds)
	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != "secretfs-node" {
		t.Errorf("serviceAccountName %q", spec.ServiceAccountName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", spec.Tolerations)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	var driver *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == "driver" {
			driver = &spec.Containers[i]
		}
	}
	if driver == nil {
		t.Fatal("no container named driver")
	}
	if driver.SecurityContext == nil || driver.SecurityContext.Privileged == nil || !*driver.SecurityContext.Privileged {
		t.Error("driver container is not privileged: it cannot mount into pods' directories")
	}
	// /healthz is on the pod's own address, for kubelet's HTTP probes (an
	// exec probe starts a process in the container every few seconds).
	for _, p := range DriverProbeProblems(driver) {
		t.Error(p)
	}
	if !slices.ContainsFunc(driver.Ports, func(p corev1.ContainerPort) bool { return p.Name == "healthz" && p.ContainerPort == 9808 }) {
		t.Errorf("driver ports %+v lack healthz 9808", driver.Ports)
	}
	env := map[string]corev1.EnvVar{}
	podIP := -1
	for i, e := range driver.Env {
		env[e.Name] = e
		if e.Name == "POD_IP" {
			podIP = i
		}
	}
	if v := env["HEALTH_ADDR"].Value; v != "$(POD_IP):9808" {
		t.Errorf("HEALTH_ADDR %q, want $(POD_IP):9808 (the pod's own address, never every interface)", v)
	}
	if i := slices.IndexFunc(driver.Env, func(e corev1.EnvVar) bool { return e.Name == "HEALTH_ADDR" }); podIP < 0 || i < podIP {
		t.Errorf("HEALTH_ADDR (env %d) does not follow POD_IP (env %d): $(POD_IP) would not expand", i, podIP)
	}
	if v := env["METRICS_ADDR"].Value; v != "$(POD_IP):9809" || env["POD_IP"].ValueFrom == nil || env["POD_IP"].ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("METRICS_ADDR %q must be the pod's own IP ($(POD_IP) from status.podIP), never every interface", v)
	}
	if driver.Resources.Requests.Memory().IsZero() || driver.Resources.Limits.Memory().IsZero() {
		t.Error("driver has no memory request and limit")
	}
	for _, m := range driver.VolumeMounts {
		hp, ok := hostPaths[m.Name]
		if !ok {
			continue
		}
		// kubelet passes host paths; the driver must see them at the same names.
		if hp != m.MountPath {
			t.Errorf("volume %s: host path %s mounted at %s; they must be equal", m.Name, hp, m.MountPath)
		}
		propagation := corev1.MountPropagationNone
		if m.MountPropagation != nil {
			propagation = *m.MountPropagation
		}
		if (m.Name == "pods-dir") != (propagation == corev1.MountPropagationBidirectional) {
			t.Errorf("volume %s has propagation %s; only pods-dir is Bidirectional", m.Name, propagation)
		}
	}
	// The node budget (explicit, or derived from the memory limit) fits in
	// the limit with the driver's headroom and holds at least two full
	// volumes (content, metadata and the node cache's copy).
	limit := driver.Resources.Limits.Memory().Value()
	nodeBudget, err := budget.ForMemoryLimit(limit)
	tmpfsSize := int64(0)
	for _, a := range driver.Args {
		if v, ok := strings.CutPrefix(a, "--node-budget="); ok {
			q := resource.MustParse(v)
			nodeBudget = q.Value()
		}
		if v, ok := strings.CutPrefix(a, "--tmpfs-size="); ok {
			q := resource.MustParse(v)
			tmpfsSize = q.Value()
		}
	}
	if err != nil || nodeBudget+budget.Headroom(limit) > limit || nodeBudget < 2*(2*tmpfsSize+4096) || tmpfsSize == 0 {
		t.Errorf("memory limit %d, node budget %d (%v), tmpfs size %d: the budget must fit the limit and hold two full volumes", limit, nodeBudget, err, tmpfsSize)
	}
	args := strings.Join(driver.Args, " ")
	for _, want := range []string{
		"--endpoint=unix://" + hostPaths["plugin-dir"] + "/csi.sock",
		"--registration-dir=$(REGISTRATION_DIR)",
		"--node-id=$(NODE_NAME)",
		// Production enables the real backends only; fake is for tests.
		"--backends=azure,kubernetes",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("driver args %q lack %q", args, want)
		}
	}
	if hostPaths["plugin-dir"] != "/var/lib/kubelet/plugins/csi.secretfs.dev" || hostPaths["registration-dir"] != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("host paths %v", hostPaths)
	}
}

func TestChartCRDMatchesKustomize(t *testing.T) {
	a, err := os.ReadFile(filepath.Join(deployDir, "crd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(deployDir, "charts/secretfs/files/secretproviderclasses.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("deploy/charts/secretfs/files/secretproviderclasses.yaml differs from deploy/crd.yaml; copy it over")
	}
}

// Every example and the CRD are valid YAML with apiVersion and kind.
func TestAllManifestsParse(t *testing.T) {
	err := filepath.WalkDir(deployDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") || strings.Contains(p, "/charts/secretfs/") && !strings.Contains(p, "/files/") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for doc := range strings.SplitSeq(string(data), "\n---\n") {
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			if meta.Kind == "" {
				t.Errorf("%s: a document without kind", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The example external provider puts its socket where the driver looks:
// the same host directory, mounted at the path the driver searches by
// default (--provider-dir), named after the provider of the example class.
func TestExternalProviderExample(t *testing.T) {
	const dir = "/var/run/secrets-store-csi-providers"
	hostDir := func(ds *appsv1.DaemonSet, container string) (host, mount string, args []string) {
		t.Helper()
		spec := ds.Spec.Template.Spec
		for _, c := range spec.Containers {
			if c.Name != container {
				continue
			}
			args = c.Args
			for _, m := range c.VolumeMounts {
				if m.MountPath != dir {
					continue
				}
				for _, v := range spec.Volumes {
					if v.Name == m.Name && v.HostPath != nil {
						return v.HostPath.Path, m.MountPath, args
					}
				}
			}
		}
		t.Fatalf("%s: container %s mounts no host directory at %s", ds.Name, container, dir)
		return "", "", nil
	}
	var driver, ext appsv1.DaemonSet
	decode(t, "daemonset.yaml", &driver)
	decode(t, "examples/external-provider/daemonset.yaml", &ext)
	dHost, _, dArgs := hostDir(&driver, "driver")
	eHost, _, eArgs := hostDir(&ext, "provider")
	if dHost != eHost {
		t.Errorf("driver mounts providers' sockets from %s, the example provider writes to %s", dHost, eHost)
	}
	if slices.ContainsFunc(dArgs, func(a string) bool { return strings.HasPrefix(a, "--provider-dir") }) {
		t.Errorf("driver args %q override --provider-dir; the default includes %s", dArgs, dir)
	}
	var class struct {
		Spec struct {
			Provider string `json:"provider"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(docs(t, "examples/external-provider/app/class.yaml")[0], &class); err != nil {
		t.Fatal(err)
	}
	if want := "--endpoint=unix://" + dir + "/" + class.Spec.Provider + ".sock"; !slices.Contains(eArgs, want) {
		t.Errorf("example provider args %q lack %s (the provider of app/class.yaml)", eArgs, want)
	}
	if ext.Spec.Template.Spec.AutomountServiceAccountToken == nil || *ext.Spec.Template.Spec.AutomountServiceAccountToken {
		t.Error("the example provider mounts an API token it does not need")
	}
}
