package lab_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"vmha/types"
)

// 8. The Web UI lists scenario 1's recovery when filtered by the host's search attribute, and its pages tell the
// recovery as a story (issue 12): the RecoverVM workflow's summary and its steps' summaries (which VM, which target,
// what for), and the monitor's current details (what vmha sees of the host and what it does about it). Headless
// Chromium reads each page as a person would see it, and saves a screenshot of it under tests/artifacts.
func (w *world) webUI(t *testing.T, host string) {
	b := newBrowser(t)
	recoveries := w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s'", types.HostRecoveryWorkflow, types.HostAttr.GetName(), host))
	if len(recoveries) == 0 {
		t.Fatalf("no HostRecovery of %s to look for in the Web UI", host)
	}
	recovery := recoveries[0]
	query := fmt.Sprintf("%s=%q", types.HostAttr.GetName(), host)
	text := b.visit(t, w.uiURL("workflows?query="+url.QueryEscape(query)), "web-ui-recovery.png", recovery)
	for _, other := range w.workflows(t, fmt.Sprintf("WorkflowType = '%s'", types.HostRecoveryWorkflow)) {
		if !strings.HasPrefix(other, "vmha-recovery-"+host+"-") && strings.Contains(text, other) {
			t.Fatalf("the filtered Web UI lists %s, a recovery of another host", other)
		}
	}

	// Scenario 1's recovery of vm1 from host (other scenarios recovered other VMs from it since).
	at, err := w.where(t, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	uuid := w.uuidOf(t, at, "vm1")
	var fromHost []string
	for _, id := range w.recoveriesOfVM(t, uuid) {
		if strings.HasPrefix(id, fmt.Sprintf("vmha-recover-vm-%s-%s-", uuid, host)) {
			fromHost = append(fromHost, id)
		}
	}
	if len(fromHost) == 0 {
		t.Fatalf("no RecoverVM of vm1 from %s", host)
	}
	vm1 := slices.Min(fromHost) // the earliest incident: scenario 1's
	b.visit(t, w.uiURL("workflows/"+url.PathEscape(vm1)+"/"+w.runID(t, vm1)+"/history"), "web-ui-recover-vm.png",
		"Recover vm1", "claim vm1 for", "define vm1 on", "start vm1 on", "confirm vm1 runs on")

	// The monitor runs for ever: its current details are on its User Metadata tab.
	monitor := types.HostMonitorID(host)
	b.visit(t, w.uiURL("workflows/"+url.PathEscape(monitor)+"/"+w.runID(t, monitor)+"/user-metadata"), "web-ui-monitor.png",
		"What vmha sees", "What vmha does")
	t.Logf("Web UI lists %s and tells its story; screenshots in %s", recovery, b.artifacts)
}

func (w *world) uiURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%s/namespaces/%s/%s", uiPort, namespace, path)
}

func (w *world) runID(t *testing.T, workflowID string) string {
	d, err := w.client.DescribeWorkflowExecution(context.Background(), workflowID, "")
	if err != nil {
		t.Fatalf("describe %s: %v", workflowID, err)
	}
	return d.GetWorkflowExecutionInfo().GetExecution().GetRunId()
}

// browser is headless Chromium driven over the DevTools protocol: it waits for a page's text like a person would
// (a running workflow's page keeps a poll open, so "wait until the network is idle" never comes), and screenshots it.
type browser struct {
	ctx       context.Context
	artifacts string
}

func newBrowser(t *testing.T) *browser {
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium missing: run make deps-test")
	}
	artifacts, _ := filepath.Abs("../artifacts")
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1600, 3000), chromedp.UserDataDir(t.TempDir()))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first action on a context starts the browser and binds it to that context: it must be this long-lived one,
	// not the per-page timeout, whose end would close the browser.
	if _, err := chromedp.Run(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{ctx: ctx, artifacts: artifacts}
}

// pageText is what a person reads on the page: the body's text and that of its frames (the Web UI shows a
// workflow's details, which may be markdown, in a sandboxed frame of its own).
const pageText = `[document.body.innerText, ...Array.from(document.querySelectorAll('iframe')).map(f =>
	(f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : '') + '\n' + (f.srcdoc || ''))].join('\n')`

// visit opens page, waits (a minute at most) until its text holds every string in want, saves a screenshot as
// file, and returns the text. A string that never shows fails the test.
func (b *browser) visit(t *testing.T, page, file string, want ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}
	var text string
	missing := want
	for len(missing) > 0 && ctx.Err() == nil {
		var err error
		if text, err = chromedp.Run(ctx, chromedp.Evaluate[string](pageText)); err != nil {
			break
		}
		missing = nil
		for _, w := range want {
			if !strings.Contains(text, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) > 0 {
			time.Sleep(500 * time.Millisecond)
		}
	}
	// The screenshot is taken even when the wait ran out: it shows what the page said instead.
	shotCtx, cancelShot := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancelShot()
	if png, err := chromedp.Run(shotCtx, chromedp.FullScreenshot(100)); err != nil {
		t.Errorf("screenshot of %s: %v", page, err)
	} else if err := os.WriteFile(filepath.Join(b.artifacts, file), png, 0o644); err != nil {
		t.Error(err)
	}
	if len(missing) > 0 {
		t.Fatalf("the Web UI page %s never said %q (screenshot %s)", page, missing, filepath.Join(b.artifacts, file))
	}
	return text
}
