package metrics

import (
	"encoding/json"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"google.golang.org/grpc/codes"
	"sigs.k8s.io/yaml"
)

// The dashboard and alerts in deploy/monitoring (see its README).
const monitoringDir = "../../deploy/monitoring"

// externalMetrics are the series the alerts use that other exporters every
// Kubernetes Prometheus setup runs provide; anything else must be the driver's.
var externalMetrics = map[string]string{
	"up": "Prometheus",
	"kube_daemonset_status_number_unavailable": "kube-state-metrics",
	"container_memory_working_set_bytes":       "cAdvisor (kubelet)",
	"container_spec_memory_limit_bytes":        "cAdvisor (kubelet)",
}

// exportedSeries are the series names the driver's /metrics serves: every
// metric of the driver, once each labelled vector has a child, and the Go and
// process collectors that cmd/secretfs registers.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Observe("publish", time.Now(), nil)
	m.Mounted.Set(1)
	m.Fetched("fake", codes.OK, time.Millisecond)
	m.Watches.WithLabelValues("started").Inc()
	m.CacheEntries.Set(1)
	m.Published("fake", nil)
	m.Published("fake", errTest)
	m.Unpublished(nil)
	m.Unpublished(errTest)
	m.Refreshed("fake", "republish", true, nil, time.Millisecond)
	m.Refreshed("fake", "watch", false, errTest, time.Millisecond)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			out[name], out[name+"_sum"], out[name+"_count"] = true, true, true
		default:
			out[name] = true
		}
	}
	return out
}

var errTest = os.ErrPermission

// grafanaVar matches Grafana's variables ($job, ${job}, $__rate_interval).
var grafanaVar = regexp.MustCompile(`\$\{?(\w+)\}?`)

// promql parses a query with Grafana's variables replaced by values of the
// same kind, and returns the metric names it selects.
func promql(t *testing.T, query string) []string {
	t.Helper()
	q := grafanaVar.ReplaceAllStringFunc(query, func(v string) string {
		if strings.Contains(v, "interval") {
			return "5m"
		}
		return "x"
	})
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(q)
	if err != nil {
		t.Errorf("query %q: %v", query, err)
		return nil
	}
	var names []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("query %q selects series without a metric name", query)
			}
			names = append(names, vs.Name)
		}
		return nil
	})
	return names
}

func checkNames(t *testing.T, where string, names []string, exported map[string]bool, allowExternal bool) {
	t.Helper()
	for _, n := range names {
		if exported[n] {
			continue
		}
		if _, ok := externalMetrics[n]; ok && allowExternal {
			continue
		}
		t.Errorf("%s queries %s, which the driver does not export", where, n)
	}
}

func TestDashboardQueriesExportedMetrics(t *testing.T) {
	exported := exportedSeries(t)
	data, err := os.ReadFile(monitoringDir + "/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name  string
				Type  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	queries := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkNames(t, "panel "+p.Title, promql(t, tg.Expr), exported, false)
			queries++
		}
	}
	// label_values(SELECTOR, label) of the query variables.
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		m := labelValues.FindStringSubmatch(q["query"].(string))
		if m == nil {
			t.Errorf("variable %s: query %v is not label_values(selector, label)", v.Name, v.Query)
			continue
		}
		checkNames(t, "variable "+v.Name, promql(t, m[1]), exported, false)
	}
	if queries < 10 {
		t.Errorf("the dashboard has %d queries; panels went missing", queries)
	}
	t.Logf("%d dashboard queries checked", queries)
}

func TestAlertRulesParse(t *testing.T) {
	exported := exportedSeries(t)
	data, err := os.ReadFile(monitoringDir + "/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		APIVersion, Kind string
		Spec             struct {
			Groups []any `json:"groups"`
		}
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatal(err)
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		t.Fatalf("alerts.yaml is %s %s, want a PrometheusRule", rule.APIVersion, rule.Kind)
	}
	groups, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	// What `promtool check rules` does: strict fields, valid PromQL, valid
	// label and annotation templates.
	parsed, errs := rulefmt.Parse(groups, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("alerts.yaml: %v", err)
	}
	if parsed == nil {
		return
	}
	var alerts []string
	for _, g := range parsed.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			checkNames(t, "alert "+r.Alert, promql(t, r.Expr), exported, true)
		}
	}
	for _, want := range []string{"SecretfsMountErrors", "SecretfsRefreshFailures", "SecretfsProviderUnhealthy", "SecretfsDriverNotReady", "SecretfsMemoryNearLimit"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
}
