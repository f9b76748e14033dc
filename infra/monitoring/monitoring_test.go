package monitoring

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"vmha/activities/notify"
	"vmha/types"
)

// family is one metric family vmha exports: its type and label names.
type family struct {
	kind   string // COUNTER, GAUGE, HISTOGRAM...
	labels map[string]bool
}

// exported reads the metric families from a registry that notify.New filled, after one event of each kind so that
// every vector has a child to gather, and that SDKMetrics filled with the Temporal SDK metric the rules read.
func exported(t *testing.T) map[string]family {
	t.Helper()
	reg := prometheus.NewRegistry()
	n, err := notify.New(notify.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	sdk, flush := SDKMetrics(reg, slog.New(slog.DiscardHandler))
	// The name and tags the SDK gives a failed workflow task (go.temporal.io/sdk/internal/common/metrics, not
	// importable): starter's TestStatusFindsAMonitorThatCannotReplay checks that a real worker's failure carries them.
	sdk.WithTags(map[string]string{"namespace": "vmha", "task_queue": "vmha-controller", "workflow_type": "HostMonitor",
		"failure_reason": "NonDeterminismError"}).Counter("temporal_workflow_task_execution_failed").Inc(1)
	if err := flush.Close(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, e := range []types.Event{
		{Kind: types.EventHostState, Host: "hv1", From: types.HostHealthy, To: types.HostDead, At: now, Seconds: 1},
		{Kind: types.EventRecoveryStarted, Host: "hv1", VM: "web1", At: now},
		{Kind: types.EventRecoveryDone, Host: "hv1", VM: "web1", At: now, Seconds: 2},
		{Kind: types.EventRecoveryFailed, Host: "hv1", VM: "web2", At: now},
		{Kind: types.EventHostRecoveryDone, Host: "hv1", At: now, Seconds: 3},
	} {
		if err := n.Notify(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]family{}
	for _, mf := range mfs {
		f := family{kind: mf.GetType().String(), labels: map[string]bool{"job": true, "instance": true}}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				f.labels[l.GetName()] = true
			}
		}
		out[mf.GetName()] = f
	}
	if len(out) < 7 {
		t.Fatalf("the registry holds %d metric families, want notify's 6 and the SDK's at least: %v", len(out), out)
	}
	return out
}

var (
	metricName = regexp.MustCompile(`\b(?:vmha|temporal)_[a-zA-Z0-9_:]*`)
	matcher    = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*$`)
	upOfVmha   = regexp.MustCompile(`\bup\{job="vmha"\}`)
)

// checkExpr says what is wrong with a PromQL expression: a vmha_ (or temporal_) name vmha does not register (histograms also as
// _bucket, _count and _sum), a label that metric does not have, or no vmha metric at all (up{job="vmha"} counts).
func checkExpr(expr string, fams map[string]family) []string {
	var problems []string
	names := metricName.FindAllStringIndex(expr, -1)
	if len(names) == 0 && !upOfVmha.MatchString(expr) {
		problems = append(problems, "names no vmha metric")
	}
	for _, loc := range names {
		name := expr[loc[0]:loc[1]]
		f, ok := fams[name]
		labels := f.labels
		if !ok {
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				base, cut := strings.CutSuffix(name, suffix)
				if bf, found := fams[base]; cut && found && bf.kind == "HISTOGRAM" {
					ok, labels = true, withLe(bf.labels, suffix == "_bucket")
				}
			}
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: not a metric vmha exports", name))
			continue
		}
		rest := expr[loc[1]:]
		if !strings.HasPrefix(rest, "{") {
			continue
		}
		end := strings.Index(rest, "}")
		if end < 0 {
			problems = append(problems, fmt.Sprintf("%s: unclosed label matchers", name))
			continue
		}
		for _, m := range splitMatchers(rest[1:end]) {
			sub := matcher.FindStringSubmatch(m)
			switch {
			case sub == nil:
				problems = append(problems, fmt.Sprintf("%s: cannot read label matcher %q", name, m))
			case !labels[sub[1]]:
				problems = append(problems, fmt.Sprintf("%s has no label %q", name, sub[1]))
			}
		}
	}
	return problems
}

// withLe adds the le label to a histogram family's labels, for its _bucket series only.
func withLe(labels map[string]bool, bucket bool) map[string]bool {
	out := map[string]bool{"le": bucket}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// splitMatchers splits a label matcher list on the commas outside quotes.
func splitMatchers(s string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && quoted:
			i++
		case s[i] == '"':
			quoted = !quoted
		case s[i] == ',' && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if strings.TrimSpace(s[start:]) != "" {
		out = append(out, s[start:])
	}
	return out
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
}

// TestDashboard parses the Grafana dashboard and checks that every panel queries only what vmha exports.
func TestDashboard(t *testing.T) {
	fams := exported(t)
	raw, err := os.ReadFile("vmha-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("vmha-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q, title %q: want both", d.UID, d.Title)
	}
	ids := map[int]string{}
	used := map[string]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panel %q: id %d already used by %q", p.Title, p.ID, prev)
			}
			ids[p.ID] = p.Title
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Title == "" || len(p.Targets) == 0 {
				t.Errorf("panel %d (%s): want a title and at least one query, got %q and %d", p.ID, p.Type, p.Title, len(p.Targets))
			}
			for _, q := range p.Targets {
				if strings.TrimSpace(q.Expr) == "" {
					t.Errorf("panel %q query %s: empty expression", p.Title, q.RefID)
				}
				for _, problem := range checkExpr(q.Expr, fams) {
					t.Errorf("panel %q query %s (%s): %s", p.Title, q.RefID, q.Expr, problem)
				}
				for _, n := range metricName.FindAllString(q.Expr, -1) {
					used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")] = true
				}
			}
		}
	}
	walk(d.Panels)
	for _, a := range d.Annotations.List {
		for _, problem := range checkExpr(a.Expr, fams) {
			t.Errorf("annotation %q (%s): %s", a.Name, a.Expr, problem)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %q: query: %v", v.Name, err)
		}
		for _, problem := range checkExpr(q.Query, fams) {
			t.Errorf("variable %q (%s): %s", v.Name, q.Query, problem)
		}
	}
	// Every metric vmha exports has a panel.
	var missing []string
	for name := range fams {
		if strings.HasPrefix(name, "vmha_") && !used[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("no panel shows %v", missing)
	}
}

// TestAlertRules checks the alert rules' expressions against the registry the same way (promtool checks their
// syntax and behaviour), and that the alerts the operator needs exist.
func TestAlertRules(t *testing.T) {
	fams := exported(t)
	raw, err := os.ReadFile("vmha-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("vmha-alerts.yml: %v", err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			for _, problem := range checkExpr(r.Expr, fams) {
				t.Errorf("alert %s (%s): %s", r.Alert, r.Expr, problem)
			}
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a summary and a description", r.Alert)
			}
		}
	}
	// Each state that needs a person, named in the rules as a state vmha has.
	for _, s := range []types.HostState{types.HostDead, types.HostIsolated, types.HostUnknown, types.HostHung,
		types.HostStorageLost, types.HostRecoveryFailed, types.HostSuspect} {
		if !slices.Contains(types.AllHostStates, s) || !strings.Contains(string(raw), string(s)) {
			t.Errorf("no alert rule names host state %q", s)
		}
	}
	for _, want := range []string{"VmhaVMNotRecovered", "VmhaVMRecoverySlow", "VmhaControllerDown", "VmhaHypervisorWorkerGone",
		"VmhaWorkflowCannotReplay"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s (have %v)", want, alerts)
		}
	}
}

// TestCheckExprCatches makes sure the checks above can fail.
func TestCheckExprCatches(t *testing.T) {
	fams := exported(t)
	for expr, want := range map[string]string{
		`vmha_host_states{state="dead"}`:           "not a metric vmha exports",
		`vmha_host_state{status="dead"}`:           `has no label "status"`,
		`rate(vmha_vm_recoveries_total_count[5m])`: "not a metric vmha exports",
		`vmha_host_state_bucket`:                   "not a metric vmha exports",
		`up{job="node"}`:                           "names no vmha metric",
		// The SDK's counters end in _total here (SDKMetrics), and the reason is failure_reason.
		`temporal_workflow_task_execution_failed{failure_reason="NonDeterminismError"}`: "not a metric vmha exports",
		`temporal_workflow_task_execution_failed_total{reason="NonDeterminismError"}`:   `has no label "reason"`,
		`sum(vmha_vm_recovery_seconds_sum{le="1"})`:                                     `has no label "le"`,
		`vmha_host_state{host="a,b",state=~"x|y",bad`:                                   "unclosed",
	} {
		problems := checkExpr(expr, fams)
		if !strings.Contains(strings.Join(problems, "; "), want) {
			t.Errorf("checkExpr(%s) = %q, want a problem with %q", expr, problems, want)
		}
	}
	for _, ok := range []string{
		`vmha_host_state{host=~"$host", state!="healthy"} == 1`,
		`histogram_quantile(0.9, sum by (le) (rate(vmha_vm_recovery_seconds_bucket{le!="+Inf"}[5m])))`,
		`up{job="vmha"} == 0`,
	} {
		if problems := checkExpr(ok, fams); len(problems) > 0 {
			t.Errorf("checkExpr(%s) = %q, want no problem", ok, problems)
		}
	}
}
