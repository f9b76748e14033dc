package temporalserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	sqliteschema "go.temporal.io/server/schema/sqlite"

	"vmha/types"
)

const testNamespace = "vmha-test"

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func testOptions(t *testing.T, dir string) Options {
	t.Helper()
	var ports [2]int
	for i := range ports {
		p, err := freePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	return Options{DataDir: dir, FrontendPort: ports[0], UIPort: ports[1], Namespace: testNamespace, Logger: testLogger()}
}

// startServer starts a server and stops it at the end of the test unless the test stops it first.
func startServer(t *testing.T, o Options) (*Server, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if err := s.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	}
	t.Cleanup(stop)
	return s, stop
}

func dial(t *testing.T, s *Server) client.Client {
	t.Helper()
	c, err := client.DialContext(t.Context(), client.Options{
		HostPort:  s.FrontendAddress(),
		Namespace: testNamespace,
		Logger:    sdklog.NewStructuredLogger(testLogger()),
	})
	if err != nil {
		t.Fatalf("dial %s: %v", s.FrontendAddress(), err)
	}
	t.Cleanup(c.Close)
	return c
}

func greet(_ workflow.Context, name string) (string, error) { return "hello " + name, nil }

// runGreeting runs one workflow on a fresh worker, tagged VmhaHost=host, and returns its run.
func runGreeting(t *testing.T, c client.Client, id, host string) {
	t.Helper()
	const queue = "greet"
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(greet, workflow.RegisterOptions{Name: "Greet"})
	if err := w.Start(); err != nil {
		t.Fatalf("worker start: %v", err)
	}
	defer w.Stop()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        id,
		TaskQueue: queue,
		TypedSearchAttributes: temporal.NewSearchAttributes(
			types.HostAttr.ValueSet(host),
			types.HostStateAttr.ValueSet("up"),
			types.HostStateSinceAttr.ValueSet(time.Now()),
		),
	}, "Greet", host)
	if err != nil {
		t.Fatalf("start workflow %s: %v", id, err)
	}
	var got string
	if err := run.Get(ctx, &got); err != nil {
		t.Fatalf("workflow %s: %v", id, err)
	}
	if want := "hello " + host; got != want {
		t.Fatalf("workflow %s returned %q, want %q", id, got, want)
	}
}

// waitVisible polls visibility (written asynchronously) until query matches exactly the workflow IDs in want.
func waitVisible(t *testing.T, c client.Client, query string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var got []string
	for {
		resp, err := c.ListWorkflow(t.Context(), &workflowservice.ListWorkflowExecutionsRequest{Namespace: testNamespace, Query: query})
		if err != nil {
			t.Fatalf("list %q: %v", query, err)
		}
		got = got[:0]
		for _, e := range resp.GetExecutions() {
			got = append(got, e.GetExecution().GetWorkflowId())
		}
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("list %q: got %v, want %v", query, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func checkSearchAttributes(t *testing.T, c client.Client) {
	t.Helper()
	resp, err := c.OperatorService().ListSearchAttributes(t.Context(), &operatorservice.ListSearchAttributesRequest{Namespace: testNamespace})
	if err != nil {
		t.Fatalf("ListSearchAttributes: %v", err)
	}
	want := map[string]enumspb.IndexedValueType{
		"VmhaHost":           enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		"VmhaHostState":      enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		"VmhaHostStateSince": enumspb.INDEXED_VALUE_TYPE_DATETIME,
	}
	for name, typ := range want {
		if got, ok := resp.GetCustomAttributes()[name]; !ok || got != typ {
			t.Errorf("search attribute %s: got %v (present %v), want %v", name, got, ok, typ)
		}
	}
}

func TestStartRunRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	o := testOptions(t, dir)
	s, stop := startServer(t, o)

	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("data dir: %v, mode %v; want 0700", err, fi)
	}
	if _, err := os.Stat(filepath.Join(dir, dbFileName)); err != nil {
		t.Fatalf("database file: %v", err)
	}

	c := dial(t, s)
	checkSearchAttributes(t, c)
	ns, err := c.WorkflowService().DescribeNamespace(t.Context(), &workflowservice.DescribeNamespaceRequest{Namespace: testNamespace})
	if err != nil {
		t.Fatalf("DescribeNamespace: %v", err)
	}
	if got := ns.GetConfig().GetWorkflowExecutionRetentionTtl().AsDuration(); got != retention {
		t.Errorf("retention %v, want %v", got, retention)
	}
	runGreeting(t, c, "greet-1", "hv1")
	waitVisible(t, c, `VmhaHost="hv1" AND VmhaHostState="up"`, "greet-1")

	resp, err := http.Get("http://" + s.UIAddress() + "/")
	if err != nil {
		t.Fatalf("web UI: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(strings.ToLower(string(body)), "<html") {
		t.Fatalf("web UI / answered %d with %.200q, want 200 and a page", resp.StatusCode, body)
	}

	c.Close()
	stop()

	// Same directory, same ports: the namespace and search attributes already exist, the old run is still there.
	s2, _ := startServer(t, o)
	c2 := dial(t, s2)
	checkSearchAttributes(t, c2)
	if _, err := c2.DescribeWorkflowExecution(t.Context(), "greet-1", ""); err != nil {
		t.Fatalf("workflow of the first run after restart: %v", err)
	}
	runGreeting(t, c2, "greet-2", "hv2")
	waitVisible(t, c2, `VmhaHost="hv2"`, "greet-2")
	waitVisible(t, c2, `VmhaHost="hv1"`, "greet-1")
}

// A database whose namespace predates some search attribute gets it added at start.
func TestStartAddsMissingSearchAttributes(t *testing.T) {
	dir := t.TempDir()
	sqlConf := sqliteConfig(filepath.Join(dir, dbFileName))
	if err := sqliteschema.SetupSchema(sqlConf); err != nil {
		t.Fatal(err)
	}
	old, err := sqliteschema.NewNamespaceConfig(clusterName, testNamespace, false,
		map[string]enumspb.IndexedValueType{"VmhaHost": enumspb.INDEXED_VALUE_TYPE_KEYWORD})
	if err != nil {
		t.Fatal(err)
	}
	if err := sqliteschema.CreateNamespaces(sqlConf, old); err != nil {
		t.Fatal(err)
	}
	o := testOptions(t, dir)
	o.UIPort = 0
	s, _ := startServer(t, o)
	if s.UIAddress() != "" {
		t.Errorf("UIAddress %q with UIPort 0, want empty", s.UIAddress())
	}
	c := dial(t, s)
	checkSearchAttributes(t, c)
	runGreeting(t, c, "greet-3", "hv3")
	waitVisible(t, c, `VmhaHostState="up" AND VmhaHost="hv3"`, "greet-3")
}

func TestStartRefusesTakenPorts(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })
	port := taken.Addr().(*net.TCPAddr).Port

	for _, field := range []string{"FrontendPort", "UIPort"} {
		o := testOptions(t, t.TempDir())
		if field == "FrontendPort" {
			o.FrontendPort = port
		} else {
			o.UIPort = port
		}
		s, err := Start(t.Context(), o)
		if err == nil {
			_ = s.Stop()
			t.Fatalf("%s=%d taken: Start succeeded", field, port)
		}
		if !strings.Contains(err.Error(), taken.Addr().String()) {
			t.Errorf("%s=%d taken: error %q does not name the address", field, port, err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	good := Options{DataDir: "/x", Namespace: "vmha"}.withDefaults()
	if err := good.validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.DataDir = "" }, "DataDir"},
		{func(o *Options) { o.ListenAddress = "localhost" }, `ListenAddress="localhost"`},
		{func(o *Options) { o.FrontendPort = 70000 }, "FrontendPort=70000"},
		{func(o *Options) { o.UIPort = -1 }, "UIPort=-1"},
		{func(o *Options) { o.UIPort = o.FrontendPort }, "UIPort=7233"},
		{func(o *Options) { o.Namespace = "" }, "Namespace"},
	} {
		o := good
		tc.mutate(&o)
		err := o.validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("validate(%+v) = %v, want an error naming %s", o, err, tc.want)
		}
	}
}

func TestDialHost(t *testing.T) {
	for in, want := range map[string]string{"0.0.0.0": "127.0.0.1", "::": "::1", "10.0.0.5": "10.0.0.5", "127.0.0.1": "127.0.0.1"} {
		if got := dialHost(in); got != want {
			t.Errorf("dialHost(%q) = %q, want %q", in, got, want)
		}
	}
}
