// Package security runs vmha's real roles against the embedded server with mTLS and the authorizer on: the
// controller, a hypervisor worker (libvirt's test driver, a real IPMI BMC) and the operator's commands each with
// their own certificate from `vmha certs`, and checks that they work and are held to their role.
package security

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"vmha/activities"
	"vmha/activities/bmc/bmctest"
	"vmha/activities/catalog"
	"vmha/activities/hypervisor"
	"vmha/infra/certs"
	"vmha/infra/config"
	"vmha/infra/temporalclient"
	"vmha/infra/temporalserver"
	"vmha/starter"
	"vmha/types"
	"vmha/workers"
)

// lockedBuffer collects log lines written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func denied(err error) bool {
	var pd *serviceerror.PermissionDenied
	return errors.As(err, &pd)
}

// TestSecuredInstallation: with every role on its own certificate, the operator applies an inventory, the
// controller watches the host until it is healthy (its worker polls through the authorizer), the operator pauses
// and resumes it and lists hosts (the HA report runs on the controller and reads the catalog through the host's
// worker on the share queue), and none of that meets a denial. The hypervisor's certificate cannot start a
// failover, signal the monitor or serve another host's queue. A viewer runs vmha hosts and vmha status in full
// (the HA report is the one workflow it may start) but cannot start a failover, signal, cancel or terminate.
func TestSecuredInstallation(t *testing.T) {
	dir := t.TempDir()
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs.String())
		}
	})

	pki := filepath.Join(dir, "pki")
	_, err := certs.CreateCA(pki, "security test CA", 3650*24*time.Hour)
	must(t, err)
	year := 365 * 24 * time.Hour
	for _, r := range []certs.Request{
		{Role: certs.RoleServer, Name: "temporal1", DNSNames: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}},
		{Role: certs.RoleController, Name: "c1"},
		{Role: certs.RoleHypervisor, Name: "hv1"},
		{Role: certs.RoleOperator, Name: "alice"},
		{Role: certs.RoleViewer, Name: "bob"},
	} {
		r.ValidFor = year
		_, err := certs.Issue(pki, r)
		must(t, err)
	}
	server := certs.LeafFiles(pki, certs.RoleServer, "temporal1")
	ca := filepath.Join(pki, certs.CACertFile)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startCtx, startCancel := context.WithTimeout(ctx, time.Minute)
	defer startCancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	must(t, ln.Close())
	srv, err := temporalserver.Start(startCtx, temporalserver.Options{
		DataDir: filepath.Join(dir, "temporal"), FrontendPort: port, Namespace: "vmha", Logger: logger,
		TLS: &temporalserver.TLSFiles{Cert: server.Cert, Key: server.Key, ClientCA: ca},
	})
	must(t, err)
	t.Cleanup(func() { _ = srv.Stop() })

	share := filepath.Join(dir, "share")
	must(t, os.Mkdir(share, 0o755))
	_, _, err = catalog.Init(ctx, share, 5*time.Second)
	must(t, err)
	for k, v := range map[string]string{
		"VMHA_TEMPORAL_ADDRESS":   srv.FrontendAddress(),
		"VMHA_NAMESPACE":          "vmha",
		"VMHA_TLS_CA":             ca,
		"VMHA_TLS_SERVER_NAME":    "localhost",
		"VMHA_METRICS_ADDR":       "",
		"VMHA_SHARE_PATH":         share,
		"VMHA_LIBVIRT_URI":        "test:///default",
		"VMHA_QEMU_CONF":          filepath.Join(dir, "qemu.conf"),
		"VMHA_HOST_NAME":          "hv1",
		"VMHA_LOG_LEVEL":          "warn",
		"VMHA_HEARTBEAT_INTERVAL": "500ms",
	} {
		t.Setenv(k, v)
	}
	base, err := config.Load()
	must(t, err)
	dialAs := func(role certs.Role, name string) (client.Client, config.Settings) {
		t.Helper()
		s := base
		f := certs.LeafFiles(pki, role, name)
		s.TLSCert, s.TLSKey = f.Cert, f.Key
		c, err := temporalclient.Dial(startCtx, s, logger)
		must(t, err)
		t.Cleanup(c.Close)
		return c, s
	}

	if hv, err := hypervisor.Open(ctx, "test:///default", logger); err != nil {
		t.Skipf("libvirt test driver: %v (install libvirt-dev and libvirt-daemon)", err)
	} else {
		_ = hv.Close()
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	runRole := func(name string, run func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(); err != nil && ctx.Err() == nil {
				t.Errorf("%s stopped: %v", name, err)
			}
		}()
	}
	controller, cs := dialAs(certs.RoleController, "c1")
	runRole("controller", func() error { return workers.RunController(ctx, cs, controller, logger) })
	hv1, hs := dialAs(certs.RoleHypervisor, "hv1")
	runRole("hypervisor hv1", func() error { return workers.RunHypervisor(ctx, hs, hv1, logger) })

	// The inventory: hv1 answers on a loopback port, and its BMC is a real ipmi_sim.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { _ = probe.Close() })
	go func() {
		for {
			conn, err := probe.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
	sim := bmctest.Start(t, "pw-hv1")
	passwordFile := filepath.Join(dir, "bmc-hv1")
	must(t, os.WriteFile(passwordFile, []byte(sim.Password()+"\n"), 0o600))
	bmcSpec := sim.Spec()
	bmcSpec.PasswordFile = passwordFile
	inv := types.Inventory{Hosts: []types.HostSpec{{Name: "hv1", Address: "127.0.0.1", ProbePort: probe.Addr().(*net.TCPAddr).Port,
		LibvirtURI: "test:///default", BMC: bmcSpec}}}

	operatorClient, _ := dialAs(certs.RoleOperator, "alice")
	var out bytes.Buffer
	operator := starter.Starter{Client: operatorClient, Out: &out}
	opCtx, opCancel := context.WithTimeout(ctx, 2*time.Minute)
	defer opCancel()
	res, err := operator.Apply(opCtx, inv)
	if err != nil || len(res.Added) != 1 {
		t.Fatalf("operator applies the inventory: %+v, %v", res, err)
	}
	waitState(t, operator, types.HostHealthy)
	must(t, operator.Maintenance(opCtx, "hv1", true))
	waitState(t, operator, types.HostMaintenance)
	must(t, operator.Maintenance(opCtx, "hv1", false))
	waitState(t, operator, types.HostHealthy)
	out.Reset()
	_, err = operator.Hosts(opCtx)
	if err != nil || strings.Contains(out.String(), "unknown") || !strings.Contains(out.String(), "hv1") {
		t.Fatalf("operator lists hosts: %v\n%s\nwant hv1 with its HA VM counts", err, out.String())
	}
	if l := logs.String(); strings.Contains(l, "temporal call denied") {
		t.Fatalf("a role met a denial doing its own job:\n%s", l)
	}

	// The hypervisor's certificate is held to its host.
	_, err = hv1.ExecuteWorkflow(opCtx, client.StartWorkflowOptions{ID: types.ManualFailoverID("hv1"), TaskQueue: types.ControllerTaskQueue},
		types.ManualFailoverWorkflow, types.FailoverRequest{Host: "hv1", Fence: true, Reason: "stolen certificate"})
	if !denied(err) {
		t.Errorf("hypervisor starts ManualFailover: %v, want permission denied", err)
	}
	if err := hv1.SignalWorkflow(opCtx, types.HostMonitorID("hv1"), "", activities.SignalFenced, nil); !denied(err) {
		t.Errorf("hypervisor signals its monitor fenced: %v, want permission denied", err)
	}
	pollCtx, pollCancel := context.WithTimeout(opCtx, 3*time.Second)
	_, err = hv1.WorkflowService().PollActivityTaskQueue(pollCtx, &workflowservice.PollActivityTaskQueueRequest{Namespace: "vmha",
		TaskQueue: &taskqueuepb.TaskQueue{Name: types.HostTaskQueue("hv2")}, Identity: "impostor"})
	pollCancel()
	if !denied(err) {
		t.Errorf("hypervisor hv1 polls hv2's queue: %v, want permission denied", err)
	}

	// The viewer runs vmha hosts and vmha status in full (their HA report included) without a denial, but
	// changes nothing.
	viewerClient, _ := dialAs(certs.RoleViewer, "bob")
	viewer := starter.Starter{Client: viewerClient, Out: &out}
	before := len(logs.String())
	out.Reset()
	if rows, err := viewer.Hosts(opCtx); err != nil || len(rows) != 1 || strings.Contains(out.String(), "unknown") {
		t.Errorf("viewer runs vmha hosts: %+v, %v\n%s\nwant hv1 with its HA VM counts", rows, err, out.String())
	}
	out.Reset()
	st, code, err := viewer.Status(opCtx, 10)
	if err != nil || code != starter.StatusAllWell || len(st.Hosts) != 1 || st.CountsError != "" || st.Hosts[0].VMs != 0 ||
		st.Hosts[0].QueryError != "" {
		t.Errorf("viewer runs vmha status: exit %d, %v, %+v\n%s\nwant all well with hv1's HA VM counts", code, err, st, out.String())
	}
	if l := logs.String()[before:]; strings.Contains(l, "temporal call denied") {
		t.Errorf("the viewer met a denial reading hosts and status:\n%s", l)
	}
	if err := viewer.Maintenance(opCtx, "hv1", true); !denied(err) {
		t.Errorf("viewer sets maintenance: %v, want permission denied", err)
	}
	if err := viewerClient.SignalWorkflow(opCtx, types.HostMonitorID("hv1"), "", activities.SignalFenced, nil); !denied(err) {
		t.Errorf("viewer signals the monitor fenced: %v, want permission denied", err)
	}
	_, err = viewerClient.ExecuteWorkflow(opCtx, client.StartWorkflowOptions{ID: types.ManualFailoverID("hv1"), TaskQueue: types.ControllerTaskQueue},
		types.ManualFailoverWorkflow, types.FailoverRequest{Host: "hv1", Fence: true, Reason: "viewer"})
	if !denied(err) {
		t.Errorf("viewer starts ManualFailover: %v, want permission denied", err)
	}
	_, err = viewerClient.ExecuteWorkflow(opCtx, client.StartWorkflowOptions{ID: types.HostMonitorID("hv2"), TaskQueue: types.ControllerTaskQueue,
		WorkflowExecutionTimeout: 10 * time.Second}, types.HAReportWorkflow)
	if !denied(err) {
		t.Errorf("viewer starts HAReport under a monitor's ID: %v, want permission denied", err)
	}
	if err := viewerClient.TerminateWorkflow(opCtx, types.HostMonitorID("hv1"), "", "viewer"); !denied(err) {
		t.Errorf("viewer terminates the monitor: %v, want permission denied", err)
	}
	if err := viewerClient.CancelWorkflow(opCtx, types.HostMonitorID("hv1"), ""); !denied(err) {
		t.Errorf("viewer cancels the monitor: %v, want permission denied", err)
	}
	reports, err := viewerClient.ListWorkflow(opCtx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: "vmha",
		Query: fmt.Sprintf("WorkflowType = %q", types.HAReportWorkflow)})
	if err != nil || len(reports.GetExecutions()) == 0 {
		t.Fatalf("viewer lists the HA reports: %v, %v; want the ones it started", reports.GetExecutions(), err)
	}
	if err := viewerClient.TerminateWorkflow(opCtx, reports.GetExecutions()[0].GetExecution().GetWorkflowId(), "", "viewer"); !denied(err) {
		t.Errorf("viewer terminates an HA report: %v, want permission denied", err)
	}
	if d, err := viewerClient.DescribeWorkflowExecution(opCtx, types.HostMonitorID("hv1"), ""); err != nil ||
		d.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		t.Errorf("hv1's monitor after the viewer's attempts: %v, %v; want running", d.GetWorkflowExecutionInfo().GetStatus(), err)
	}
	resp, err := controller.DescribeTaskQueue(opCtx, types.HostTaskQueue("hv1"), enumspb.TASK_QUEUE_TYPE_ACTIVITY)
	if err != nil || len(resp.GetPollers()) == 0 {
		t.Errorf("pollers of hv1's queue: %v, %v; want hv1's worker", resp.GetPollers(), err)
	}
}

// waitState waits until hv1's monitor reports state.
func waitState(t *testing.T, s starter.Starter, state types.HostState) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		rows, err := s.HostRows(context.Background())
		if err == nil && len(rows) == 1 && rows[0].State == state {
			return
		}
		last = fmt.Sprintf("%+v, %v", rows, err)
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("hv1 never %s; last: %s", state, last)
}
