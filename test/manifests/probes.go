package manifests

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// DriverProbeProblems says what is wrong with the probes of the driver
// container, for the manifests here and for what the chart renders. kubelet
// probes /healthz over HTTP (an exec probe would start a process in the
// container every few seconds). /healthz answers 503 until the driver has
// recovered and serves CSI, then 200 until shutdown: a startup probe marks
// the pod Ready, and once started the driver answers a liveness probe alone,
// because a readiness probe would be a connection every few seconds that
// learns nothing.
func DriverProbeProblems(driver *corev1.Container) []string {
	var problems []string
	for name, p := range map[string]*corev1.Probe{"startup": driver.StartupProbe, "liveness": driver.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "healthz" || p.Exec != nil {
			problems = append(problems, fmt.Sprintf("driver %s probe %+v, want httpGet /healthz on port healthz", name, p))
		}
	}
	if driver.ReadinessProbe != nil {
		problems = append(problems, fmt.Sprintf("driver readiness probe %+v: the startup probe marks it Ready", driver.ReadinessProbe))
	}
	if p := driver.LivenessProbe; p != nil && 60/period(p) > 3 {
		problems = append(problems, fmt.Sprintf("driver liveness probe every %d s: %d requests a minute, want at most 3", period(p), 60/period(p)))
	}
	if p := driver.StartupProbe; p != nil && period(p)*failures(p) < 120 {
		problems = append(problems, fmt.Sprintf("driver startup probe gives recovery %d s, want at least 120", period(p)*failures(p)))
	}
	return problems
}

// period and failures are what kubelet uses for a probe: the field, or
// Kubernetes' default where it is left out (10 s, 3 failures).
func period(p *corev1.Probe) int32 {
	if p.PeriodSeconds == 0 {
		return 10
	}
	return p.PeriodSeconds
}

func failures(p *corev1.Probe) int32 {
	if p.FailureThreshold == 0 {
		return 3
	}
	return p.FailureThreshold
}
