package chart

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

func checkDefault(t *testing.T, r *rendered) {
	d := r.driver(t)
	spec := r.daemonSet.Spec.Template.Spec
	wantArgs(t, d, map[string]string{
		"--registration-dir":                  "/var/lib/kubelet/plugins_registry",
		"--provider-dir":                      "/var/run/secrets-store-csi-providers,/etc/kubernetes/secrets-store-csi-providers",
		"--health-addr":                       "$(POD_IP):9808",
		"--metrics-addr":                      "$(POD_IP):9809",
		"--backends":                          "azure,kubernetes",
		"--azure-managed-identity-namespaces": "",
		"--rotation-interval":                 "2m",
		"--tmpfs-size":                        "8Mi",
		"--max-procs":                         "1",
		"--events":                            "true",
		"--rotation-events":                   "false",
		"--log-format":                        "json",
		"-v":                                  "0",
	})
	if d.Image != "secretfs:dev" {
		t.Errorf("image %q, want the chart's appVersion as tag", d.Image)
	}
	if len(spec.Containers) != 1 || spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("containers %d, hostNetwork %v, priorityClassName %q", len(spec.Containers), spec.HostNetwork, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", spec.Tolerations)
	}
	if s := r.daemonSet.Spec.UpdateStrategy; s.Type != "RollingUpdate" || s.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("updateStrategy %+v", s)
	}
	if r.crd == nil || r.serviceAccount == nil || r.clusterRole == nil || r.service != nil || r.serviceMonitor != nil {
		t.Errorf("objects: crd %v, service account %v, role %v, service %v, service monitor %v; want the first three only",
			r.crd != nil, r.serviceAccount != nil, r.clusterRole != nil, r.service != nil, r.serviceMonitor != nil)
	}
	wantRules := []rbacv1.PolicyRule{
		{APIGroups: []string{"secrets-store.csi.x-k8s.io"}, Resources: []string{"secretproviderclasses"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}
	if !equalJSON(t, r.clusterRole.Rules, wantRules) {
		t.Errorf("ClusterRole rules %+v, want exactly %+v", r.clusterRole.Rules, wantRules)
	}
	if !slices.Equal(audiences(r.csiDriver), []string{""}) {
		t.Errorf("token audiences %q, want only the kubernetes backend's", audiences(r.csiDriver))
	}
	if p := r.csiDriver.Spec.ServiceAccountTokenInSecrets; p == nil || !*p {
		t.Error("serviceAccountTokenInSecrets not set on Kubernetes 1.37")
	}
}

func checkSidecar(t *testing.T, r *rendered) {
	d := r.driver(t)
	spec := r.daemonSet.Spec.Template.Spec
	if _, ok := arg(d, "--registration-dir"); ok {
		t.Error("driver registers itself although the sidecar does")
	}
	wantArgs(t, d, map[string]string{"--kubelet-dir": "/data/kubelet", "--events": "false", "--rotation-events": "false", "--metrics-addr": ""})
	if hasPort(d, "metrics") || r.service != nil {
		t.Error("metrics port or Service rendered with metrics.enabled=false")
	}
	if len(spec.Containers) != 2 || spec.Containers[1].Name != "node-driver-registrar" {
		t.Fatalf("containers %d, want driver and node-driver-registrar", len(spec.Containers))
	}
	reg := spec.Containers[1]
	if got, _ := arg(&reg, "--kubelet-registration-path"); got != "/data/kubelet/plugins/csi.secretfs.dev/csi.sock" {
		t.Errorf("registrar --kubelet-registration-path=%s", got)
	}
	for _, rule := range r.clusterRole.Rules {
		if slices.Contains(rule.Resources, "events") {
			t.Error("events permission kept with events=false")
		}
	}
}

func checkHostNetwork(t *testing.T, r *rendered) {
	d := r.driver(t)
	spec := r.daemonSet.Spec.Template.Spec
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v dnsPolicy %q", spec.HostNetwork, spec.DNSPolicy)
	}
	wantArgs(t, d, map[string]string{"--health-addr": "$(POD_IP):19808", "--metrics-addr": "127.0.0.1:19809",
		"--provider-dir": "/var/run/secrets-store-csi-providers"})
	if d.Image != "registry.example/secretfs@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" {
		t.Errorf("image %q, want the digest", d.Image)
	}
	if spec.ServiceAccountName != "secretfs-existing" || r.serviceAccount != nil || r.clusterRole != nil || r.binding != nil || r.crd != nil {
		t.Errorf("serviceAccountName %q; service account, RBAC or CRD rendered although turned off", spec.ServiceAccountName)
	}
}

func checkFull(t *testing.T, r *rendered) {
	d := r.driver(t)
	ds := r.daemonSet
	spec := ds.Spec.Template.Spec
	wantArgs(t, d, map[string]string{
		"--driver-name":                       "csi.example.org",
		"--provider-dir":                      "/opt/providers,/etc/providers",
		"--health-addr":                       "$(POD_IP):19808",
		"--metrics-addr":                      "$(POD_IP):19809",
		"--backends":                          "azure,kubernetes,fake",
		"--azure-managed-identity-namespaces": "infra,monitoring",
		"--rotation-interval":                 "30s",
		"--tmpfs-size":                        "2Mi",
		"--max-procs":                         "2",
		"--log-format":                        "text",
		"-v":                                  "2",
		"--azure-ca-file":                     "/etc/secretfs-ca/ca.crt",
		"--sync-secrets":                      "true",
		"--sync-secrets-max-bytes":            "512Ki",
		"--sync-owner":                        "controller",
		"--restart-on-change":                 "true",
		"--restart-qps":                       "3",
	})
	if !slices.ContainsFunc(r.clusterRole.Rules, func(rule rbacv1.PolicyRule) bool {
		return slices.Equal(rule.Resources, []string{"pods"}) && slices.Equal(rule.Verbs, []string{"get"})
	}) {
		t.Errorf("no get on pods for the controller owners of synced Secrets: %+v", r.clusterRole.Rules)
	}
	var audienceFlags []string
	for _, a := range d.Args {
		if strings.HasPrefix(a, "--provider-audiences=") {
			audienceFlags = append(audienceFlags, a)
		}
	}
	if !slices.Equal(audienceFlags, []string{`--provider-audiences=aws=`, `--provider-audiences=vault=vault,""`}) {
		t.Errorf("provider audience flags %q", audienceFlags)
	}
	if d.Image != "registry.example/secretfs:v9.9.9" || d.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %q pull %q", d.Image, d.ImagePullPolicy)
	}
	if len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("imagePullSecrets %+v", spec.ImagePullSecrets)
	}
	if spec.Affinity == nil || spec.Affinity.NodeAffinity == nil || spec.NodeSelector["example.org/pool"] != "apps" {
		t.Errorf("affinity %+v nodeSelector %v", spec.Affinity, spec.NodeSelector)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "example.org/dedicated" {
		t.Errorf("tolerations %+v", spec.Tolerations)
	}
	if ds.Spec.Template.Labels["example.org/team"] != "platform" || ds.Spec.Template.Annotations["example.org/scrape"] != "true" ||
		ds.Spec.Template.Annotations["kubectl.kubernetes.io/default-container"] != "driver" {
		t.Errorf("pod labels %v annotations %v", ds.Spec.Template.Labels, ds.Spec.Template.Annotations)
	}
	var env []string
	for _, e := range d.Env {
		env = append(env, e.Name)
	}
	if !slices.Equal(env, []string{"NODE_NAME", "POD_IP", "HTTPS_PROXY", "NO_PROXY"}) {
		t.Errorf("env %v", env)
	}
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "extra-ca" && v.ConfigMap != nil }) ||
		!slices.ContainsFunc(d.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "extra-ca" && m.MountPath == "/etc/secretfs-ca" }) {
		t.Error("extra volume or mount missing")
	}
	if d.Resources.Requests.Memory().String() != "48Mi" || d.Resources.Limits.Memory().String() != "256Mi" || !d.Resources.Limits.Cpu().IsZero() {
		t.Errorf("resources %+v", d.Resources)
	}
	if spec.PriorityClassName != "" || ds.Spec.UpdateStrategy.Type != "OnDelete" || *spec.TerminationGracePeriodSeconds != 10 {
		t.Errorf("priorityClassName %q updateStrategy %+v grace %d", spec.PriorityClassName, ds.Spec.UpdateStrategy, *spec.TerminationGracePeriodSeconds)
	}
	if !slices.Equal(audiences(r.csiDriver), []string{"", "api://AzureADTokenExchange", "vault"}) {
		t.Errorf("token audiences %q", audiences(r.csiDriver))
	}
	if spec.ServiceAccountName != "secretfs-sa" || r.serviceAccount.Annotations["example.org/owner"] != "platform" {
		t.Errorf("service account %q annotations %v", spec.ServiceAccountName, r.serviceAccount.Annotations)
	}
	sm := r.serviceMonitor
	if sm == nil || r.service == nil {
		t.Fatal("ServiceMonitor or Service missing")
	}
	ep := sm.Spec.Endpoints[0]
	if sm.Labels["release"] != "prometheus" || ep.Interval != "15s" || ep.ScrapeTimeout != "5s" ||
		len(ep.RelabelConfigs) != 1 || len(ep.MetricRelabelConfigs) != 1 || sm.Namespace != namespace ||
		!slices.Equal(sm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
		t.Errorf("ServiceMonitor %+v", sm)
	}
	if r.service.Spec.Ports[0].Port != 19809 || r.service.Annotations["example.org/scrape"] != "true" {
		t.Errorf("Service %+v", r.service)
	}
}
