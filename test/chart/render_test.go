package chart

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/secretfs/secretfs/test/manifests"
)

// rendered is what one `helm template` produced, decoded strictly.
type rendered struct {
	docs           [][]byte // every document, in order
	daemonSet      *appsv1.DaemonSet
	csiDriver      *storagev1.CSIDriver
	serviceAccount *corev1.ServiceAccount
	clusterRole    *rbacv1.ClusterRole
	binding        *rbacv1.ClusterRoleBinding
	service        *corev1.Service
	serviceMonitor *monitoringv1.ServiceMonitor
	crd            *unstructured.Unstructured
	syncPolicy     *admissionv1.ValidatingAdmissionPolicy
	syncBinding    *admissionv1.ValidatingAdmissionPolicyBinding
	// restartPolicy and restartBinding: the restart-on-change policy (its
	// name ends in -restart-on-change).
	restartPolicy  *admissionv1.ValidatingAdmissionPolicy
	restartBinding *admissionv1.ValidatingAdmissionPolicyBinding
}

// parseRendered splits helm's output into documents and decodes each into
// its API type, rejecting unknown fields and unexpected kinds.
func parseRendered(t *testing.T, out string) *rendered {
	t.Helper()
	r := &rendered{}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var meta struct {
			APIVersion, Kind string
			Metadata         struct{ Name string }
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		if meta.Kind == "" {
			continue // only comments
		}
		var obj any
		switch meta.Kind {
		case "DaemonSet":
			r.daemonSet = &appsv1.DaemonSet{}
			obj = r.daemonSet
		case "CSIDriver":
			r.csiDriver = &storagev1.CSIDriver{}
			obj = r.csiDriver
		case "ServiceAccount":
			r.serviceAccount = &corev1.ServiceAccount{}
			obj = r.serviceAccount
		case "ClusterRole":
			r.clusterRole = &rbacv1.ClusterRole{}
			obj = r.clusterRole
		case "ClusterRoleBinding":
			r.binding = &rbacv1.ClusterRoleBinding{}
			obj = r.binding
		case "Service":
			r.service = &corev1.Service{}
			obj = r.service
		case "ServiceMonitor":
			r.serviceMonitor = &monitoringv1.ServiceMonitor{}
			obj = r.serviceMonitor
		case "ValidatingAdmissionPolicy":
			p := &admissionv1.ValidatingAdmissionPolicy{}
			if strings.HasSuffix(meta.Metadata.Name, "-restart-on-change") {
				r.restartPolicy = p
			} else {
				r.syncPolicy = p
			}
			obj = p
		case "ValidatingAdmissionPolicyBinding":
			b := &admissionv1.ValidatingAdmissionPolicyBinding{}
			if strings.HasSuffix(meta.Metadata.Name, "-restart-on-change") {
				r.restartBinding = b
			} else {
				r.syncBinding = b
			}
			obj = b
		case "CustomResourceDefinition":
			// Its schema is checked by the API server (dry run).
			r.crd = &unstructured.Unstructured{}
			obj = &r.crd.Object
		default:
			t.Fatalf("unexpected kind %s", meta.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: %v", meta.Kind, err)
		}
		r.docs = append(r.docs, bytes.Clone(doc))
	}
	return r
}

// chartCase is one row of the values matrix.
type chartCase struct {
	name        string
	valuesFile  string // in the chart's ci/ directory
	kubeVersion string
	check       func(t *testing.T, r *rendered)
}

const namespace = "secretfs-system"

// cases is the values matrix: each file in ci/ (every one must be listed)
// and the oldest Kubernetes without serviceAccountTokenInSecrets.
var cases = []chartCase{
	{name: "default", valuesFile: "default-values.yaml", check: checkDefault},
	{name: "sidecar", valuesFile: "sidecar-values.yaml", check: checkSidecar},
	{name: "hostnetwork", valuesFile: "hostnetwork-values.yaml", check: checkHostNetwork},
	{name: "full", valuesFile: "full-values.yaml", check: checkFull},
	{name: "kube-1.34", valuesFile: "default-values.yaml", kubeVersion: "1.34.0", check: func(t *testing.T, r *rendered) {
		if r.csiDriver.Spec.ServiceAccountTokenInSecrets != nil {
			t.Error("serviceAccountTokenInSecrets rendered for Kubernetes 1.34, whose API server rejects it")
		}
	}},
}

func (c chartCase) templateArgs() []string {
	kv := c.kubeVersion
	if kv == "" {
		kv = "1.37.0"
	}
	return []string{"template", "secretfs", chartDir, "--namespace", namespace,
		"-f", filepath.Join(chartDir, "ci", c.valuesFile), "--kube-version", kv}
}

func TestEveryCIValuesFileIsInTheMatrix(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !slices.ContainsFunc(cases, func(c chartCase) bool { return c.valuesFile == filepath.Base(f) }) {
			t.Errorf("%s is not in the test's values matrix", f)
		}
	}
}

func TestLint(t *testing.T) {
	h := newHelm(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.must("lint", "--strict", chartDir, "-f", filepath.Join(chartDir, "ci", c.valuesFile))
		})
	}
}

func TestRender(t *testing.T) {
	h := newHelm(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := parseRendered(t, h.must(c.templateArgs()...))
			checkInvariants(t, r)
			c.check(t, r)
		})
	}
}

// Values the schema does not know, or of the wrong kind, fail the render
// instead of being ignored, each with the error that names the value (any
// other helm error, such as a wrong chart path, is not this one).
func TestValuesSchemaRejects(t *testing.T) {
	h := newHelm(t)
	const schema = "values don't meet the specifications of the schema(s)"
	for _, c := range []struct {
		set  []string
		want []string // substrings of helm's error, in order
	}{
		{[]string{"--set", "metrics.servicemonitor.enabled=true"}, []string{schema, "at '/metrics': additional properties 'servicemonitor' not allowed"}}, // misspelt key
		{[]string{"--set", "unknownTopLevel=1"}, []string{schema, "additional properties 'unknownTopLevel' not allowed"}},
		{[]string{"--set", "registration=kubelet"}, []string{schema, "at '/registration': value must be one of 'self', 'sidecar'"}},
		{[]string{"--set", "logFormat=yaml"}, []string{schema, "at '/logFormat': value must be one of"}},
		{[]string{"--set", "image.pullPolicy=Sometimes"}, []string{schema, "at '/image/pullPolicy': value must be one of"}},
		{[]string{"--set-json", `tokenAudiences=["a","a"]`}, []string{schema, "at '/tokenAudiences': items at 0 and 1 are equal"}},
		{[]string{"--set", "serviceAccount.create=false"}, []string{"serviceAccount.name is required when serviceAccount.create is false"}}, // and no name
		{[]string{"--set", "kubeletDir=relative/path"}, []string{schema, "at '/kubeletDir': 'relative/path' does not match pattern '^/'"}},
	} {
		_, err := h.run(append([]string{"template", "secretfs", chartDir}, c.set...)...)
		if err == nil {
			t.Errorf("helm template %v succeeded; want an error", c.set)
			continue
		}
		rest := err.Error()
		for _, w := range c.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("helm template %v: %v\nwant an error with %q", c.set, err, w)
				break
			}
			rest = rest[i+len(w):]
		}
	}
}

func (r *rendered) driver(t *testing.T) *corev1.Container {
	t.Helper()
	if r.daemonSet == nil {
		t.Fatal("no DaemonSet rendered")
	}
	for i, c := range r.daemonSet.Spec.Template.Spec.Containers {
		if c.Name == "driver" {
			return &r.daemonSet.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatal("no container named driver")
	return nil
}

// arg returns the value of the driver flag --name=value, and whether it is there.
func arg(c *corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func wantArgs(t *testing.T, c *corev1.Container, want map[string]string) {
	t.Helper()
	for name, v := range want {
		got, ok := arg(c, name)
		if !ok {
			t.Errorf("driver has no %s (args %q)", name, c.Args)
		} else if got != v {
			t.Errorf("driver %s=%q, want %q", name, got, v)
		}
	}
}

// checkInvariants holds for every values combination.
func checkInvariants(t *testing.T, r *rendered) {
	t.Helper()
	ds, driver := r.daemonSet, r.driver(t)
	spec := ds.Spec.Template.Spec
	if ds.Namespace != namespace {
		t.Errorf("DaemonSet namespace %q", ds.Namespace)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("pod template lacks selector label %s=%s", k, v)
		}
	}
	if driver.SecurityContext == nil || driver.SecurityContext.Privileged == nil || !*driver.SecurityContext.Privileged {
		t.Error("driver container is not privileged: it cannot mount into pods' directories")
	}
	// /healthz is on the pod's own address, for kubelet's HTTP probes (an
	// exec probe starts a process in the container every few seconds).
	i := slices.IndexFunc(driver.Ports, func(p corev1.ContainerPort) bool { return p.Name == "healthz" })
	if i < 0 {
		t.Fatalf("driver ports %+v lack healthz", driver.Ports)
	}
	if health, _ := arg(driver, "--health-addr"); health != fmt.Sprintf("$(POD_IP):%d", driver.Ports[i].ContainerPort) {
		t.Errorf("--health-addr=%s, want $(POD_IP):%d (the pod's own address, never every interface)", health, driver.Ports[i].ContainerPort)
	}
	for _, p := range manifests.DriverProbeProblems(driver) {
		t.Error(p)
	}
	if driver.Resources.Limits.Memory().IsZero() {
		t.Error("driver has no memory limit")
	}
	if len(driver.Env) == 0 || driver.Env[0].Name != "NODE_NAME" || driver.Env[0].ValueFrom == nil {
		t.Errorf("driver env %+v does not start with NODE_NAME from the downward API", driver.Env)
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	var providerMounts []string
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
		if strings.HasPrefix(m.Name, "providers-dir-") {
			providerMounts = append(providerMounts, m.MountPath)
		}
	}
	if dirs, _ := arg(driver, "--provider-dir"); dirs != strings.Join(providerMounts, ",") {
		t.Errorf("--provider-dir=%s, but the provider directories mounted are %v", dirs, providerMounts)
	}
	driverName, _ := arg(driver, "--driver-name")
	if r.csiDriver == nil || r.csiDriver.Name != driverName {
		t.Fatalf("CSIDriver %v does not match --driver-name=%s", r.csiDriver, driverName)
	}
	kubeletDir, _ := arg(driver, "--kubelet-dir")
	pluginDir := kubeletDir + "/plugins/" + driverName
	if hostPaths["plugin-dir"] != pluginDir || hostPaths["pods-dir"] != kubeletDir+"/pods" {
		t.Errorf("host paths %v do not follow --kubelet-dir=%s", hostPaths, kubeletDir)
	}
	wantArgs(t, driver, map[string]string{"--endpoint": "unix://" + pluginDir + "/csi.sock", "--node-id": "$(NODE_NAME)"})
	s := r.csiDriver.Spec
	if s.AttachRequired == nil || *s.AttachRequired || s.PodInfoOnMount == nil || !*s.PodInfoOnMount ||
		s.RequiresRepublish == nil || !*s.RequiresRepublish ||
		!slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}) {
		t.Errorf("CSIDriver spec %+v", s)
	}
	if r.clusterRole != nil {
		// Secrets only for secret sync (spec.secretObjects), and then never
		// listed, watched or deleted.
		sync, _ := arg(driver, "--sync-secrets")
		for _, rule := range r.clusterRole.Rules {
			if slices.Contains(rule.Resources, "*") || slices.Contains(rule.Verbs, "*") || slices.Contains(rule.APIGroups, "*") {
				t.Errorf("ClusterRole rule %+v has a wildcard", rule)
			}
			if slices.Contains(rule.Resources, "secrets") && (sync != "true" || !slices.Equal(rule.Verbs, []string{"create", "patch"})) {
				t.Errorf("ClusterRole rule %+v reaches Secrets (--sync-secrets=%s)", rule, sync)
			}
			// Pods: get only, for the controller owners of synced Secrets
			// and for restarts on change.
			owner, _ := arg(driver, "--sync-owner")
			restart, _ := arg(driver, "--restart-on-change")
			if slices.Contains(rule.Resources, "pods") && ((sync != "true" || owner != "controller") && restart != "true" || !slices.Equal(rule.Verbs, []string{"get"})) {
				t.Errorf("ClusterRole rule %+v reaches pods (--sync-secrets=%s --sync-owner=%s --restart-on-change=%s)", rule, sync, owner, restart)
			}
			// Workloads and evictions only for restarts on change, with
			// exactly the component's verbs.
			for _, res := range []string{"replicasets", "deployments", "statefulsets", "daemonsets", "pods/eviction"} {
				if slices.Contains(rule.Resources, res) && (restart != "true" || !slices.Equal(rule.Verbs, componentVerbs(t, res))) {
					t.Errorf("ClusterRole rule %+v reaches %s (--restart-on-change=%s)", rule, res, restart)
				}
			}
			// Pod statuses only with --pod-status, and exactly the
			// component's verbs.
			podStatus, _ := arg(driver, "--pod-status")
			if slices.Contains(rule.Resources, "secretproviderclasspodstatuses") && (podStatus != "true" || !slices.Equal(rule.Verbs, []string{"create", "patch", "delete"})) {
				t.Errorf("ClusterRole rule %+v reaches SecretProviderClassPodStatuses (--pod-status=%s)", rule, podStatus)
			}
		}
		if r.binding == nil || r.binding.RoleRef.Name != r.clusterRole.Name || len(r.binding.Subjects) != 1 ||
			r.binding.Subjects[0].Name != spec.ServiceAccountName || r.binding.Subjects[0].Namespace != namespace {
			t.Errorf("ClusterRoleBinding %+v does not bind %s to the driver's service account %s", r.binding, r.clusterRole.Name, spec.ServiceAccountName)
		}
	}
	if r.serviceAccount != nil && r.serviceAccount.Name != spec.ServiceAccountName {
		t.Errorf("ServiceAccount %s rendered, DaemonSet uses %s", r.serviceAccount.Name, spec.ServiceAccountName)
	}
	// With sync, the component's admission policy, matching exactly the
	// driver's service account; without, none.
	if sync, _ := arg(driver, "--sync-secrets"); sync == "true" {
		checkSyncPolicy(t, r, "system:serviceaccount:"+namespace+":"+spec.ServiceAccountName)
	} else if r.syncPolicy != nil || r.syncBinding != nil {
		t.Error("admission policy rendered without --sync-secrets")
	}
	if restart, _ := arg(driver, "--restart-on-change"); restart == "true" {
		checkRestartPolicy(t, r, "system:serviceaccount:"+namespace+":"+spec.ServiceAccountName)
	} else if r.restartPolicy != nil || r.restartBinding != nil {
		t.Error("restart admission policy rendered without --restart-on-change")
	}
	if r.crd != nil {
		if r.crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
			t.Error("the CRD lacks helm.sh/resource-policy: keep; uninstalling would delete every class")
		}
		want := readCRD(t)
		if !equalJSON(t, r.crd.Object["spec"], want.Object["spec"]) {
			t.Error("the chart's CRD spec differs from deploy/crd.yaml")
		}
	}
	if r.serviceMonitor != nil {
		if r.service == nil || r.service.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Fatal("ServiceMonitor without a headless metrics Service")
		}
		for k, v := range r.serviceMonitor.Spec.Selector.MatchLabels {
			if r.service.Labels[k] != v {
				t.Errorf("ServiceMonitor selects %s=%s, the Service has %v", k, v, r.service.Labels)
			}
		}
		if len(r.serviceMonitor.Spec.Endpoints) != 1 || r.serviceMonitor.Spec.Endpoints[0].Port != "metrics" {
			t.Errorf("ServiceMonitor endpoints %+v", r.serviceMonitor.Spec.Endpoints)
		}
	}
	if r.service != nil {
		for k, v := range r.service.Spec.Selector {
			if ds.Spec.Template.Labels[k] != v {
				t.Errorf("metrics Service selects %s=%s, driver pods have %v", k, v, ds.Spec.Template.Labels)
			}
		}
		if len(r.service.Spec.Ports) != 1 || r.service.Spec.Ports[0].TargetPort.StrVal != "metrics" || !hasPort(driver, "metrics") {
			t.Errorf("metrics Service ports %+v do not reach the driver's metrics port", r.service.Spec.Ports)
		}
	}
}

func hasPort(c *corev1.Container, name string) bool {
	return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == name })
}

func readCRD(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile("../../deploy/crd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

func audiences(d *storagev1.CSIDriver) []string {
	var out []string
	for _, r := range d.Spec.TokenRequests {
		out = append(out, r.Audience)
	}
	return out
}

// checkSyncPolicy: the chart's policy is the kustomize component's, named
// after the release, matching user only, and bound to deny.
func checkSyncPolicy(t *testing.T, r *rendered, user string) {
	t.Helper()
	if r.syncPolicy == nil || r.syncBinding == nil {
		t.Fatal("--sync-secrets without the admission policy and its binding")
	}
	want, _ := readSyncPolicy(t)
	got := r.syncPolicy.Spec
	if len(got.MatchConditions) != 1 || got.MatchConditions[0].Expression != "request.userInfo.username == '"+user+"'" {
		t.Errorf("policy matches %+v, want the driver's service account %s", got.MatchConditions, user)
	}
	got.MatchConditions, want.Spec.MatchConditions = nil, nil
	if !equalJSON(t, got, want.Spec) {
		t.Errorf("the chart's policy differs from the component's:\n%+v\n%+v", got, want.Spec)
	}
	b := r.syncBinding.Spec
	if b.PolicyName != r.syncPolicy.Name || !slices.Equal(b.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) || b.ParamRef != nil || b.MatchResources != nil {
		t.Errorf("binding %+v", b)
	}
}

// readSyncPolicy reads the kustomize component's policy and binding.
func readSyncPolicy(t *testing.T) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding) {
	t.Helper()
	data, err := os.ReadFile("../../deploy/components/sync-secrets/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	var p admissionv1.ValidatingAdmissionPolicy
	var b admissionv1.ValidatingAdmissionPolicyBinding
	if len(docs) != 2 || yaml.UnmarshalStrict([]byte(docs[0]), &p) != nil || yaml.UnmarshalStrict([]byte(docs[1]), &b) != nil {
		t.Fatal("deploy/components/sync-secrets/policy.yaml: want a ValidatingAdmissionPolicy and its binding")
	}
	return &p, &b
}

// The chart's copy of the policy is the component's, byte for byte.
func TestSyncPolicyFileIsTheComponents(t *testing.T) {
	a, err := os.ReadFile("../../deploy/components/sync-secrets/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(chartDir, "files", "sync-secrets-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("deploy/charts/secretfs/files/sync-secrets-policy.yaml differs from deploy/components/sync-secrets/policy.yaml")
	}
}

// The chart's copy of the restart policy is the component's, byte for byte.
func TestRestartPolicyFileIsTheComponents(t *testing.T) {
	a, err := os.ReadFile("../../deploy/components/restart-on-change/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(chartDir, "files", "restart-on-change-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("deploy/charts/secretfs/files/restart-on-change-policy.yaml differs from deploy/components/restart-on-change/policy.yaml")
	}
}

// componentVerbs are the verbs the restart-on-change component grants on
// resource.
func componentVerbs(t *testing.T, resource string) []string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/components/restart-on-change/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict([]byte(strings.Split(string(data), "\n---\n")[0]), &role); err != nil {
		t.Fatal(err)
	}
	for _, rule := range role.Rules {
		if slices.Contains(rule.Resources, resource) {
			return rule.Verbs
		}
	}
	return nil
}

// checkRestartPolicy: the chart's restart policy is the component's, named
// after the release, matching user only, and bound to deny.
func checkRestartPolicy(t *testing.T, r *rendered, user string) {
	t.Helper()
	if r.restartPolicy == nil || r.restartBinding == nil {
		t.Fatal("--restart-on-change without the admission policy and its binding")
	}
	docs := strings.Split(string(must(os.ReadFile("../../deploy/components/restart-on-change/policy.yaml"))), "\n---\n")
	var want admissionv1.ValidatingAdmissionPolicy
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &want); err != nil {
		t.Fatal(err)
	}
	got := r.restartPolicy.Spec
	if len(got.MatchConditions) != 1 || got.MatchConditions[0].Expression != "request.userInfo.username == '"+user+"'" {
		t.Errorf("restart policy matches %+v, want the driver's service account %s", got.MatchConditions, user)
	}
	got.MatchConditions, want.Spec.MatchConditions = nil, nil
	if !equalJSON(t, got, want.Spec) {
		t.Error("the chart's restart policy differs from deploy/components/restart-on-change/policy.yaml")
	}
	b := r.restartBinding
	if b.Spec.PolicyName != r.restartPolicy.Name || !slices.Equal(b.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("restart binding %+v", b.Spec)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
