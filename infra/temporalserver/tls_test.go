package temporalserver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
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
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/common/tasktoken"

	"vmha/activities"
	"vmha/infra/certs"
	"vmha/types"
)

// syncBuffer collects the server's log lines, written from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// pki is a CA made by package certs with one certificate per role.
type pki struct {
	dir string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	p := pki{dir: filepath.Join(t.TempDir(), "pki")}
	if _, err := certs.CreateCA(p.dir, "test CA", 10*365*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, r := range []certs.Request{
		{Role: certs.RoleServer, Name: "temporal1", DNSNames: []string{"temporal1.test"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}},
		{Role: certs.RoleController, Name: "c1"},
		{Role: certs.RoleHypervisor, Name: "hv1"},
		{Role: certs.RoleOperator, Name: "alice"},
		{Role: certs.RoleViewer, Name: "bob"},
	} {
		r.ValidFor = 365 * 24 * time.Hour
		if _, err := certs.Issue(p.dir, r); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p pki) serverFiles() *TLSFiles {
	f := certs.LeafFiles(p.dir, certs.RoleServer, "temporal1")
	return &TLSFiles{Cert: f.Cert, Key: f.Key, ClientCA: filepath.Join(p.dir, certs.CACertFile)}
}

func (p pki) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	pemData, err := os.ReadFile(filepath.Join(p.dir, certs.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemData)
	return pool
}

// clientTLS verifies the server as temporal1.test and presents certFile/keyFile (none when empty).
func (p pki) clientTLS(t *testing.T, certFile, keyFile string) *tls.Config {
	t.Helper()
	conf := &tls.Config{RootCAs: p.roots(t), ServerName: "temporal1.test", MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf
}

// unknownRole signs, with the CA of p, a client certificate whose OU is no vmha role.
func (p pki) unknownRole(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	keyPEM, err := os.ReadFile(filepath.Join(p.dir, certs.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	caKeyAny, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(p.dir, certs.CACertFile))
	block, _ = pem.Decode(caPEM)
	caCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "mallory", OrganizationalUnit: []string{"admin"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKeyAny)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(t.TempDir(), "mallory.pem"), filepath.Join(t.TempDir(), "mallory-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func dialTLS(t *testing.T, s *Server, conf *tls.Config) (client.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, client.Options{
		HostPort: s.FrontendAddress(), Namespace: testNamespace,
		Logger:            sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		ConnectionOptions: client.ConnectionOptions{TLS: conf},
		// Often enough for the workers below to record a few while they run.
		WorkerHeartbeatInterval: time.Second,
	})
	if err == nil {
		t.Cleanup(c.Close)
	}
	return c, err
}

func (p pki) dialAs(t *testing.T, s *Server, role certs.Role, name string) client.Client {
	t.Helper()
	f := certs.LeafFiles(p.dir, role, name)
	c, err := dialTLS(t, s, p.clientTLS(t, f.Cert, f.Key))
	if err != nil {
		t.Fatalf("dial as %s %s: %v", role, name, err)
	}
	return c
}

func denied(err error) bool {
	var pd *serviceerror.PermissionDenied
	return errors.As(err, &pd)
}

// mustDeny fails unless err is a permission denial; mustAllow fails on one (other errors are fine: the call got
// past the authorizer).
func mustDeny(t *testing.T, what string, err error) {
	t.Helper()
	if !denied(err) {
		t.Errorf("%s: %v, want permission denied", what, err)
	}
}

func mustAllow(t *testing.T, what string, err error) {
	t.Helper()
	if denied(err) {
		t.Errorf("%s: %v, want it allowed", what, err)
	}
}

// poll polls an activity queue once, briefly: a denial comes back at once, an allowed poll times out empty.
func poll(c client.Client, q string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := c.WorkflowService().PollActivityTaskQueue(ctx, &workflowservice.PollActivityTaskQueueRequest{
		Namespace: testNamespace, TaskQueue: &taskqueuepb.TaskQueue{Name: q}, Identity: "test"})
	return err
}

func startRaw(c client.Client, workflowType, id, q string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: q}, workflowType, args...)
	return err
}

// startWith starts an HAReport with o, as a raw start (nobody needs to run it).
func startWith(c client.Client, o client.StartWorkflowOptions) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.ExecuteWorkflow(ctx, o, types.HAReportWorkflow)
	return err
}

// hostStats stands for a host activity: it heartbeats once and answers with its host.
func hostStats(ctx context.Context) (string, error) {
	activity.RecordHeartbeat(ctx, "probing")
	return "hv1 stats", nil
}

// probeHost is a controller workflow that runs hostStats on hv1's own queue.
func probeHost(ctx workflow.Context) (string, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{TaskQueue: types.HostTaskQueue("hv1"),
		StartToCloseTimeout: 20 * time.Second, HeartbeatTimeout: 10 * time.Second})
	var out string
	err := workflow.ExecuteActivity(ctx, "HostStats").Get(ctx, &out)
	return out, err
}

// stepsOnTwoQueues runs a host step on hv1's queue and a controller step ("Fence") at once.
func stepsOnTwoQueues(ctx workflow.Context) error {
	host := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue: types.HostTaskQueue("hv1"), StartToCloseTimeout: time.Minute}), "HostStats")
	fence := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue: "controller-steps", StartToCloseTimeout: time.Minute}), "Fence")
	if err := host.Get(ctx, nil); err != nil {
		return err
	}
	return fence.Get(ctx, nil)
}

// forgeTaskToken: hv1 takes the host step's task, then answers with that token rewritten to name the controller's
// step of the same workflow: denied, while the real token is accepted.
func forgeTaskToken(t *testing.T, controller, hv1 client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	run, err := controller.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "two-steps", TaskQueue: types.ControllerTaskQueue}, "StepsOnTwoQueues")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = controller.TerminateWorkflow(context.Background(), run.GetID(), "", "test over") }()
	task, err := hv1.WorkflowService().PollActivityTaskQueue(ctx, &workflowservice.PollActivityTaskQueueRequest{
		Namespace: testNamespace, TaskQueue: &taskqueuepb.TaskQueue{Name: types.HostTaskQueue("hv1")}, Identity: "hv1"})
	if err != nil || task.GetActivityType().GetName() != "HostStats" {
		t.Fatalf("hv1 polls its queue: %v, %v; want the HostStats task", task.GetActivityType(), err)
	}
	var fenceEvent int64
	var fenceID string
	iter := controller.GetWorkflowHistory(ctx, run.GetID(), run.GetRunID(), false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		e, err := iter.Next()
		if err != nil {
			t.Fatal(err)
		}
		if a := e.GetActivityTaskScheduledEventAttributes(); a.GetActivityType().GetName() == "Fence" {
			fenceEvent, fenceID = e.GetEventId(), a.GetActivityId()
		}
	}
	tok, err := tasktoken.NewSerializer().Deserialize(task.GetTaskToken())
	if err != nil || fenceEvent == 0 {
		t.Fatalf("token %v, fence scheduled at event %d", err, fenceEvent)
	}
	tok.ScheduledEventId, tok.ActivityId = fenceEvent, fenceID
	forged, err := tasktoken.NewSerializer().Serialize(tok)
	if err != nil {
		t.Fatal(err)
	}
	_, err = hv1.WorkflowService().RespondActivityTaskCompleted(ctx, &workflowservice.RespondActivityTaskCompletedRequest{
		Namespace: testNamespace, TaskToken: forged, Identity: "hv1"})
	mustDeny(t, "hv1 answers the controller's step with a forged token", err)
	_, err = hv1.WorkflowService().RespondActivityTaskCompleted(ctx, &workflowservice.RespondActivityTaskCompletedRequest{
		Namespace: testNamespace, TaskToken: task.GetTaskToken(), Identity: "hv1"})
	if err != nil {
		t.Errorf("hv1 answers its own task: %v", err)
	}
	// The SDK cancels an activity whose heartbeat gets NotFound: a finished task must still get that, not a denial.
	_, err = hv1.WorkflowService().RecordActivityTaskHeartbeat(ctx, &workflowservice.RecordActivityTaskHeartbeatRequest{
		Namespace: testNamespace, TaskToken: task.GetTaskToken(), Identity: "hv1"})
	var notFound *serviceerror.NotFound
	if !errors.As(err, &notFound) {
		t.Errorf("hv1 heartbeats its finished task: %v, want NotFound", err)
	}
}

// TestMutualTLSRoles starts the server with mTLS and checks, over the network, what each role's certificate may do.
func TestMutualTLSRoles(t *testing.T) {
	p := newPKI(t)
	logs := &syncBuffer{}
	o := testOptions(t, t.TempDir())
	o.TLS = p.serverFiles()
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, _ := startServer(t, o)
	if s.ClientTLS() == nil {
		t.Fatal("ClientTLS is nil with TLS on")
	}

	controller := p.dialAs(t, s, certs.RoleController, "c1")
	hv1 := p.dialAs(t, s, certs.RoleHypervisor, "hv1")
	operator := p.dialAs(t, s, certs.RoleOperator, "alice")
	viewer := p.dialAs(t, s, certs.RoleViewer, "bob")

	// The controller runs a workflow whose activity the hypervisor's worker answers on its own queue, heartbeat
	// included: both workers work through the authorizer.
	cw := worker.New(controller, types.ControllerTaskQueue, worker.Options{})
	cw.RegisterWorkflowWithOptions(probeHost, workflow.RegisterOptions{Name: "ProbeHost"})
	cw.RegisterWorkflowWithOptions(stepsOnTwoQueues, workflow.RegisterOptions{Name: "StepsOnTwoQueues"})
	hw := worker.New(hv1, types.HostTaskQueue("hv1"), worker.Options{DisableWorkflowWorker: true})
	hw.RegisterActivityWithOptions(hostStats, activity.RegisterOptions{Name: "HostStats"})
	for _, w := range []worker.Worker{cw, hw} {
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	run, err := controller.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "probe-hv1", TaskQueue: types.ControllerTaskQueue}, "ProbeHost")
	if err != nil {
		t.Fatalf("controller starts ProbeHost: %v", err)
	}
	var got string
	if err := run.Get(ctx, &got); err != nil || got != "hv1 stats" {
		t.Fatalf("ProbeHost = %q, %v; want the hypervisor's answer", got, err)
	}
	time.Sleep(2 * time.Second)
	hw.Stop()
	if l := logs.String(); strings.Contains(l, "temporal call denied") {
		t.Fatalf("the workers met a denial (start, poll, heartbeat, answer and shutdown must all pass):\n%s", l)
	}
	forgeTaskToken(t, controller, hv1)
	cw.Stop()

	// A host monitor to signal (nobody runs it: only who may signal it matters).
	monitor := types.HostMonitorID("hv1")
	mustAllow(t, "controller starts a monitor", startRaw(controller, types.HostMonitorWorkflow, monitor, "nobody-polls"))

	// The hypervisor: its own queue and the share queue, nothing else.
	mustAllow(t, "hv1 polls the share queue", poll(hv1, types.ShareTaskQueue))
	mustDeny(t, "hv1 polls hv2's queue", poll(hv1, types.HostTaskQueue("hv2")))
	mustDeny(t, "hv1 starts ManualFailover", startRaw(hv1, types.ManualFailoverWorkflow, types.ManualFailoverID("hv2"),
		types.ControllerTaskQueue, types.FailoverRequest{Host: "hv2", Fence: true}))
	mustDeny(t, "hv1 signals a monitor fenced", hv1.SignalWorkflow(t.Context(), monitor, "", activities.SignalFenced, nil))
	_, err = hv1.ListWorkflow(t.Context(), &workflowservice.ListWorkflowExecutionsRequest{Namespace: testNamespace})
	mustDeny(t, "hv1 lists workflows", err)

	// The controller may do all of that.
	mustAllow(t, "controller polls hv2's queue", poll(controller, types.HostTaskQueue("hv2")))
	mustAllow(t, "controller starts ManualFailover", startRaw(controller, types.ManualFailoverWorkflow, types.ManualFailoverID("hv2"),
		"nobody-polls", types.FailoverRequest{Host: "hv2"}))
	mustAllow(t, "controller signals a monitor fenced", controller.SignalWorkflow(t.Context(), monitor, "", activities.SignalFenced, nil))

	// The operator starts the operator workflows and sends maintenance, but is no worker.
	mustAllow(t, "operator starts ManualFailover", startRaw(operator, types.ManualFailoverWorkflow, types.ManualFailoverID("hv1"),
		types.ControllerTaskQueue, types.FailoverRequest{Host: "hv1"}))
	mustAllow(t, "operator signals maintenance", operator.SignalWorkflow(t.Context(), monitor, "", activities.SignalMaintenance, true))
	mustDeny(t, "operator signals a monitor fenced", operator.SignalWorkflow(t.Context(), monitor, "", activities.SignalFenced, nil))
	mustDeny(t, "operator polls hv1's queue", poll(operator, types.HostTaskQueue("hv1")))
	mustDeny(t, "operator terminates a monitor", operator.TerminateWorkflow(t.Context(), monitor, "", "test"))

	// The viewer reads only.
	resp, err := viewer.ListWorkflow(t.Context(), &workflowservice.ListWorkflowExecutionsRequest{Namespace: testNamespace})
	if err != nil || len(resp.GetExecutions()) == 0 {
		t.Errorf("viewer lists workflows: %d, %v; want the workflows started above", len(resp.GetExecutions()), err)
	}
	// ... and starts the HA report as vmha hosts and status do, only so.
	report := client.StartWorkflowOptions{ID: types.HAReportID(time.Now()), TaskQueue: types.ControllerTaskQueue,
		WorkflowExecutionTimeout: 10 * time.Second}
	mustAllow(t, "viewer starts HAReport", startWith(viewer, report))
	squat := report
	squat.ID = types.HostMonitorID("hv2")
	mustDeny(t, "viewer starts HAReport under a monitor's ID", startWith(viewer, squat))
	recurring := report
	recurring.ID, recurring.CronSchedule = types.HAReportID(time.Now()), "* * * * *"
	mustDeny(t, "viewer starts a recurring HAReport", startWith(viewer, recurring))
	mustDeny(t, "viewer starts ManualFailover", startRaw(viewer, types.ManualFailoverWorkflow, types.ManualFailoverID("hv1"),
		types.ControllerTaskQueue, types.FailoverRequest{Host: "hv1"}))
	mustDeny(t, "viewer terminates a monitor", viewer.TerminateWorkflow(t.Context(), monitor, "", "test"))

	// A certificate of the CA without a vmha role is denied everything but the health check.
	cf, kf := p.unknownRole(t)
	if mallory, err := dialTLS(t, s, p.clientTLS(t, cf, kf)); err != nil {
		t.Errorf("dial with a certificate of an unknown role: %v, want the handshake to pass", err)
	} else {
		_, err = mallory.ListWorkflow(t.Context(), &workflowservice.ListWorkflowExecutionsRequest{Namespace: testNamespace})
		mustDeny(t, "unknown role lists workflows", err)
	}

	// No certificate, or one from another CA: refused before any call.
	if _, err := dialTLS(t, s, p.clientTLS(t, "", "")); err == nil {
		t.Error("dial without a client certificate succeeded")
	}
	other := newPKI(t)
	f := certs.LeafFiles(other.dir, certs.RoleController, "c1")
	if _, err := dialTLS(t, s, other.clientTLS(t, f.Cert, f.Key)); err == nil {
		t.Error("dial with a controller certificate of another CA succeeded")
	}
	if c, err := client.DialContext(t.Context(), client.Options{HostPort: s.FrontendAddress(), Namespace: testNamespace,
		Logger: sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}); err == nil {
		c.Close()
		t.Error("dial without TLS succeeded")
	}

	// Each denial is logged at warn level with who and what.
	want := fmt.Sprintf(`role=hypervisor name=hv1 api=%sStartWorkflowExecution`, "/temporal.api.workflowservice.v1.WorkflowService/")
	if l := logs.String(); !strings.Contains(l, "temporal call denied") || !strings.Contains(l, want) {
		t.Errorf("server log lacks the denial %q:\n%s", want, l)
	}
}

// TestWebUISecureDefaults: the UI listens on loopback, reads through the mTLS frontend with the server's
// certificate, and refuses writes unless they are turned on.
func TestWebUISecureDefaults(t *testing.T) {
	p := newPKI(t)
	o := testOptions(t, t.TempDir())
	o.TLS = p.serverFiles()
	o.ListenAddress = "0.0.0.0"
	s, _ := startServer(t, o)
	host, _, err := net.SplitHostPort(s.UIAddress())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("UI address %q, want 127.0.0.1 (the frontend listens on %s)", s.UIAddress(), o.ListenAddress)
	}
	// Not reachable on the machine's other addresses.
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipnet, ok := a.(*net.IPNet); ok && !ipnet.IP.IsLoopback() && ipnet.IP.To4() != nil {
				addr := net.JoinHostPort(ipnet.IP.String(), fmt.Sprint(o.UIPort))
				if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					conn.Close()
					t.Errorf("web UI answers on %s", addr)
				}
			}
		}
	}

	controller := p.dialAs(t, s, certs.RoleController, "c1")
	mustAllow(t, "controller starts a workflow", startRaw(controller, types.HostMonitorWorkflow, types.HostMonitorID("hv1"), "nobody-polls"))

	base := "http://" + s.UIAddress()
	// Visibility is written asynchronously: the new workflow shows up in the list within moments.
	var resp *http.Response
	var body []byte
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if resp, err = http.Get(base + "/api/v1/namespaces/" + testNamespace + "/workflows"); err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && strings.Contains(string(body), types.HostMonitorID("hv1")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("UI list of workflows: %d %.300s; want 200 listing %s (the UI reads through mTLS)", resp.StatusCode, body, types.HostMonitorID("hv1"))
		}
	}
	var csrf string
	for _, c := range resp.Cookies() {
		if c.Name == "_csrf" {
			csrf = c.Value
		}
	}
	if csrf == "" {
		t.Fatal("no _csrf cookie from the UI")
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/namespaces/"+testNamespace+"/workflows/"+types.HostMonitorID("hv1")+"/terminate",
		strings.NewReader(`{"reason":"test"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", csrf)
	req.AddCookie(&http.Cookie{Name: "_csrf", Value: csrf})
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("UI terminate with writes off: %d %.300s, want 405", resp.StatusCode, body)
	}
	d, err := controller.DescribeWorkflowExecution(t.Context(), types.HostMonitorID("hv1"), "")
	if err != nil || d.GetWorkflowExecutionInfo().GetCloseTime() != nil {
		t.Fatalf("monitor after the UI's refused terminate: %v, closed %v; want it running", err, d.GetWorkflowExecutionInfo().GetCloseTime())
	}
}

func TestLoadServerTLSRefusesMisfits(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t)
	good := *p.serverFiles()
	ctrl := certs.LeafFiles(p.dir, certs.RoleController, "c1")
	for name, tc := range map[string]struct {
		files TLSFiles
		want  string
	}{
		"controller cert":    {TLSFiles{Cert: ctrl.Cert, Key: ctrl.Key, ClientCA: good.ClientCA}, "role controller"},
		"client CA of other": {TLSFiles{Cert: good.Cert, Key: good.Key, ClientCA: other.serverFiles().ClientCA}, "must be issued by that CA"},
		"key of another":     {TLSFiles{Cert: good.Cert, Key: ctrl.Key, ClientCA: good.ClientCA}, good.Cert},
	} {
		if _, err := loadServerTLS(tc.files); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", name, err, tc.want)
		}
	}
	if _, err := loadServerTLS(good); err != nil {
		t.Fatalf("server certificate of the client CA: %v", err)
	}
}

// TestCheckOpen: plain gRPC on a non-loopback address is refused, naming the address and the settings, unless the
// operator opted out (then one error line says what that means); loopback and TLS pass silently.
func TestCheckOpen(t *testing.T) {
	files := &TLSFiles{Cert: "c", Key: "k", ClientCA: "ca"}
	for _, tc := range []struct {
		listen    string
		tls       *TLSFiles
		plaintext bool
		refuse    bool
		logged    bool
	}{
		{"0.0.0.0", nil, false, true, false},
		{"10.250.0.1", nil, false, true, false},
		{"::", nil, false, true, false},
		{"10.250.0.1", nil, true, false, true},
		{"127.0.0.1", nil, false, false, false},
		{"127.0.0.3", nil, false, false, false},
		{"::1", nil, false, false, false},
		{"0.0.0.0", files, false, false, false},
	} {
		var logs bytes.Buffer
		err := checkOpen(tc.listen, 7233, tc.tls, tc.plaintext, slog.New(slog.NewTextHandler(&logs, nil)))
		name := fmt.Sprintf("listen %s, TLS %t, plaintext %t", tc.listen, tc.tls != nil, tc.plaintext)
		if (err != nil) != tc.refuse {
			t.Errorf("%s: %v, want refused %t", name, err, tc.refuse)
		}
		if err != nil {
			for _, want := range []string{net.JoinHostPort(tc.listen, "7233"), "VMHA_SERVER_TLS_CERT", "VMHA_SERVER_TLS_KEY",
				"VMHA_SERVER_TLS_CLIENT_CA", "VMHA_SERVER_PLAINTEXT=true"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%s: error %q does not name %s", name, err, want)
				}
			}
		}
		if got := strings.Count(logs.String(), "level=ERROR"); got != map[bool]int{true: 1, false: 0}[tc.logged] {
			t.Errorf("%s: %d error lines %q, want one exactly when opted out", name, got, logs.String())
		}
	}
}

// TestStartRefusesPlaintextOnNetwork: Start checks before it creates or listens on anything.
func TestStartRefusesPlaintextOnNetwork(t *testing.T) {
	o := testOptions(t, filepath.Join(t.TempDir(), "data"))
	o.ListenAddress = "0.0.0.0"
	if s, err := Start(t.Context(), o); err == nil {
		_ = s.Stop()
		t.Fatal("Start without TLS on 0.0.0.0 succeeded")
	} else if !strings.Contains(err.Error(), "VMHA_SERVER_PLAINTEXT") {
		t.Errorf("Start: %v, want the refusal naming VMHA_SERVER_PLAINTEXT", err)
	}
	if _, err := os.Stat(o.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir after the refusal: %v, want none created", err)
	}
}
