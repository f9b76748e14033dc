package workers

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.temporal.io/server/temporaltest"

	"vmha/infra/config"
)

// TestControllerExportsSDKMetrics runs the controller against a real Temporal server and scrapes its /metrics: the
// Temporal SDK's worker metrics must be there beside vmha's, or a workflow the workers cannot replay (after an
// upgrade) would fail its task unseen (the VmhaWorkflowCannotReplay alert reads temporal_workflow_task_execution_failed_total).
func TestControllerExportsSDKMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Temporal server")
	}
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	defer ts.Stop()
	s, err := config.Load()
	if err != nil {
		t.Fatal(err)
	}
	s.Namespace, s.MetricsAddr, s.HeartbeatStoppedAfter = ts.GetDefaultNamespace(), freeAddr(t), 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunController(ctx, s, ts.GetDefaultClient(), slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunController: %v", err)
		}
	}()

	var page string
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(page, "temporal_worker_start_total{") || !strings.Contains(page, "temporal_num_pollers{") {
		if time.Now().After(deadline) {
			t.Fatalf("no SDK worker metrics on /metrics after 30 s:\n%s", page)
		}
		time.Sleep(200 * time.Millisecond)
		page = scrape(t, "http://"+s.MetricsAddr+"/metrics")
	}
	for _, want := range []string{`task_queue="vmha-controller"`, `namespace="` + s.Namespace + `"`, "go_goroutines"} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %s:\n%s", want, page)
		}
	}
}

// freeAddr is a loopback address with a port nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return string(b)
}
