package lab_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vmha/types"
)

// 8. The Web UI lists scenario 1's recovery when filtered by the host's search attribute, and its pages tell the
// recovery as a story (issue 12): the RecoverVM workflow's summary and its steps' summaries (which VM, which target,
// what for), and the monitor's current details (what vmha sees of the host and what it does about it).
func (w *world) webUI(t *testing.T, host string) {
	ui := newChromium(t)
	recoveries := w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s'", types.HostRecoveryWorkflow, types.HostAttr.GetName(), host))
	if len(recoveries) == 0 {
		t.Fatalf("no HostRecovery of %s to look for in the Web UI", host)
	}
	recovery := recoveries[0]
	query := fmt.Sprintf("%s=%q", types.HostAttr.GetName(), host)
	list := w.uiURL("workflows?query=" + url.QueryEscape(query))
	dom := ui.dumpUntil(t, list, recovery)
	ui.screenshot(t, list, "web-ui-recovery.png")
	if !strings.Contains(dom, recovery) {
		t.Fatalf("the Web UI filtered by %s does not list %s", query, recovery)
	}
	for _, other := range w.workflows(t, fmt.Sprintf("WorkflowType = '%s'", types.HostRecoveryWorkflow)) {
		if !strings.HasPrefix(other, "vmha-recovery-"+host+"-") && strings.Contains(dom, other) {
			t.Fatalf("the filtered Web UI lists %s, a recovery of another host", other)
		}
	}

	vmRecoveries := w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s'", types.RecoverVMWorkflow, types.HostAttr.GetName(), host))
	if len(vmRecoveries) == 0 {
		t.Fatalf("no RecoverVM of %s", host)
	}
	page := w.uiURL("workflows/" + url.PathEscape(vmRecoveries[0]) + "/" + w.runID(t, vmRecoveries[0]) + "/history")
	story := []string{"Recover vm1", "claim vm1 for", "define vm1 on", "start vm1 on", "confirm vm1 runs on"}
	dom = ui.dumpUntil(t, page, story...)
	ui.screenshot(t, page, "web-ui-recover-vm.png")
	for _, want := range story {
		if !strings.Contains(dom, want) {
			t.Errorf("the Web UI page of %s does not say %q", vmRecoveries[0], want)
		}
	}

	monitor := types.HostMonitorID(host)
	page = w.uiURL("workflows/" + url.PathEscape(monitor) + "/" + w.runID(t, monitor) + "/history")
	seen := []string{"What vmha sees", "What vmha does"}
	dom = ui.dumpUntil(t, page, seen...)
	ui.screenshot(t, page, "web-ui-monitor.png")
	for _, want := range seen {
		if !strings.Contains(dom, want) {
			t.Errorf("the Web UI page of %s does not say %q", monitor, want)
		}
	}
	t.Logf("Web UI lists %s and tells its story; screenshots in %s", recovery, ui.artifacts)
}

func (w *world) uiURL(path string) string {
	return fmt.Sprintf("http://%s:%s/namespaces/%s/%s", strings.Split(temporalAddr, ":")[0], uiPort, namespace, path)
}

func (w *world) runID(t *testing.T, workflowID string) string {
	d, err := w.client.DescribeWorkflowExecution(context.Background(), workflowID, "")
	if err != nil {
		t.Fatalf("describe %s: %v", workflowID, err)
	}
	return d.GetWorkflowExecutionInfo().GetExecution().GetRunId()
}

// chromium is headless Chromium as the test's browser: it dumps a page's DOM once its scripts ran, and screenshots it.
type chromium struct {
	path      string
	flags     []string
	artifacts string
}

func newChromium(t *testing.T) *chromium {
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium missing: run make deps-test")
	}
	artifacts, _ := filepath.Abs("../artifacts")
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	return &chromium{path: path, artifacts: artifacts, flags: []string{"--headless", "--no-sandbox", "--disable-gpu",
		"--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1600,1200", "--virtual-time-budget=15000"}}
}

// dumpUntil dumps the page's DOM until it holds every text in want, three tries at most: the page fills in by XHR
// after its scripts start, and a slow machine may dump it before.
func (c *chromium) dumpUntil(t *testing.T, page string, want ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var dom string
	for attempt := 0; attempt < 3; attempt++ {
		out, err := exec.CommandContext(ctx, c.path, append(c.flags, "--dump-dom", page)...).Output()
		if err != nil {
			t.Fatalf("chromium --dump-dom %s: %v", page, err)
		}
		dom = string(out)
		missing := false
		for _, w := range want {
			missing = missing || !strings.Contains(dom, w)
		}
		if !missing {
			break
		}
	}
	return dom
}

func (c *chromium) screenshot(t *testing.T, page, file string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shot := filepath.Join(c.artifacts, file)
	if out, err := exec.CommandContext(ctx, c.path, append(c.flags, "--screenshot="+shot, page)...).CombinedOutput(); err != nil {
		t.Fatalf("chromium --screenshot %s: %v\n%s", page, err, out)
	}
}
