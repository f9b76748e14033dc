// Package production runs vmha's production topology on this machine: PostgreSQL from Debian's packages, and
// `vmha server` processes forming one Temporal cluster on it, each on its own loopback address.
package production

import (
	"crypto/tls"
	"vmha/tests/topology"

	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"vmha/infra/certs"
	"vmha/types"
)

const (
	namespace = "vmha"
	// clusterName is the DNS name of every node (one A record each), in their certificates too.
	clusterName = "temporal.cluster.test"
	taskQueue   = "production-cluster-test"
	// testHost is the VmhaHost search attribute of the test's workflows: it proves the namespace and vmha's search
	// attributes were registered on the cluster.
	testHost = "cluster-test"
)

// quiet keeps the SDK's per-task debug lines out of the test's output.
var quiet = sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

// nodeIPs are the cluster nodes' addresses: each node has its own, as on real hosts, and they all use the same ports.
var nodeIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

// TestClusterOnPostgres starts PostgreSQL and three `vmha server` nodes at once against it, each serving mTLS with
// its own certificate from `vmha certs`, two of them with a controller replica and one with the Web UI, checks that
// they form one cluster, that a workflow started through one node runs and is listed through the others (and that node's UI),
// and that the cluster keeps serving, in-flight and new workflows alike, when one node is SIGKILLed.
func TestClusterOnPostgres(t *testing.T) {
	pg := topology.StartPostgres(t)
	bin := topology.VMHABinary(t)
	frontendPort := topology.FreeFrontendPort(t, nodeIPs)
	refusesWrongPassword(t, bin, pg, frontendPort)
	ca := topology.NewCA(t)
	// The test's clients act as a controller: every call in vmha's namespace, and cluster-wide reads.
	me := ca.Issue(t, certs.Request{Role: certs.RoleController, Name: "cluster-test"})

	// Nodes 2 and 3 run as README's management machines do, each with a controller replica, node 3 with the Web UI
	// too; node 1, the one killed, runs neither.
	uiPort := topology.FreePort(t, nodeIPs[2])
	controller := []string{"VMHA_EMBEDDED_CONTROLLER=true", "VMHA_METRICS_ADDR="}
	ui := []string{"VMHA_UI_ADDRESS=" + nodeIPs[2], "VMHA_UI_PORT=" + strconv.Itoa(uiPort)}

	started := time.Now()
	nodes := make([]*topology.Node, len(nodeIPs))
	for i, ip := range nodeIPs {
		server := ca.Issue(t, certs.Request{Role: certs.RoleServer, Name: "node-" + ip, DNSNames: []string{clusterName},
			IPs: []net.IP{net.ParseIP(ip)}})
		env := append(pg.NodeEnv(),
			"VMHA_SERVER_TLS_CERT="+server.Cert, "VMHA_SERVER_TLS_KEY="+server.Key, "VMHA_SERVER_TLS_CLIENT_CA="+ca.Cert)
		if i > 0 {
			env = append(env, controller...)
		}
		if i == 2 {
			env = append(env, ui...)
		}
		nodes[i] = topology.StartNode(t, bin, ip, frontendPort, env)
		nodes[i].TLS = ca.ClientTLS(t, me, ip)
		// Cluster administration (DescribeCluster) is the server role's alone: the test reads membership as the node.
		nodes[i].AdminTLS = ca.ClientTLS(t, server, ip)
	}
	for _, n := range nodes {
		n.WaitReady(t, 2*time.Minute)
		t.Logf("node %s serving %.1f s after the three started together", n.IP, n.ReadyAt.Sub(started).Seconds())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topology.WaitMembers(ctx, t, nodes[1], nodeIPs)

	// Inside the cluster only nodes talk: a node's history service and its membership port (ringpop, 300 below
	// the frontend's) take a server certificate and refuse a hypervisor's, though the same CA signed both, and a
	// client without a certificate.
	history := net.JoinHostPort(nodes[1].IP, strconv.Itoa(frontendPort+1))
	if err := internodeHandshake(history, nodes[1].AdminTLS); err != nil {
		t.Errorf("history service %s refused a node's server certificate: %v", history, err)
	}
	membership := net.JoinHostPort(nodes[1].IP, strconv.Itoa(frontendPort-300))
	if err := internodeHandshake(membership, nodes[1].AdminTLS); err != nil && strings.Contains(err.Error(), "certificate") {
		t.Errorf("membership port %s refused a node's server certificate: %v", membership, err)
	}
	hypervisor := ca.Issue(t, certs.Request{Role: certs.RoleHypervisor, Name: "hv-internode"})
	for _, address := range []string{history, membership} {
		for name, conf := range map[string]*tls.Config{
			"a hypervisor certificate": ca.ClientTLS(t, hypervisor, clusterName),
			"no certificate":           ca.ClientTLS(t, certs.Files{}, clusterName),
		} {
			if err := internodeHandshake(address, conf); err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Errorf("%s accepted %s (%v)", address, name, err)
			} else {
				t.Logf("%s refused %s: %v", address, name, err)
			}
		}
	}

	// A client without a certificate is refused by a cluster node as by the embedded server.
	anonymous := ca.ClientTLS(t, certs.Files{}, nodes[2].IP)
	if c, err := client.DialContext(ctx, client.Options{HostPort: nodes[2].Address, Namespace: namespace, Logger: quiet,
		ConnectionOptions: client.ConnectionOptions{TLS: anonymous}}); err == nil {
		c.Close()
		t.Errorf("node %s accepted a client without a certificate", nodes[2].IP)
	}

	clients := make([]client.Client, len(nodes))
	for i, n := range nodes {
		c, err := client.DialContext(ctx, client.Options{HostPort: n.Address, Namespace: namespace, Logger: quiet,
			ConnectionOptions: client.ConnectionOptions{TLS: n.TLS}})
		if err != nil {
			t.Fatalf("dial node %s: %v", n.IP, err)
		}
		defer c.Close()
		clients[i] = c
	}
	// The worker dials the cluster by its DNS name, as README tells hypervisors and controllers to: the SDK resolves
	// every node's address and spreads its calls over them, so it must carry on through the others when node 1 dies.
	dnsServer := topology.ServeDNS(t, "127.0.0.1:0", clusterName, nodeIPs)
	byName, err := client.DialContext(ctx, client.Options{
		HostPort: "dns://" + dnsServer + "/" + net.JoinHostPort(clusterName, strconv.Itoa(frontendPort)), Namespace: namespace,
		Logger: quiet, ConnectionOptions: client.ConnectionOptions{TLS: ca.ClientTLS(t, me, clusterName)},
	})
	if err != nil {
		t.Fatalf("dial the cluster as %s (DNS at %s): %v", clusterName, dnsServer, err)
	}
	defer byName.Close()
	w := worker.New(byName, taskQueue, worker.Options{})
	w.RegisterWorkflow(echoWorkflow)
	w.RegisterActivity(echoActivity)
	if err := w.Start(); err != nil {
		t.Fatalf("start worker on %s: %v", clusterName, err)
	}
	defer w.Stop()

	// Started through node 1, result and listing through node 3.
	first := startEcho(ctx, t, clients[0], "first", 0)
	if got := echoResult(ctx, t, clients[2], first); got != "echo first" {
		t.Fatalf("workflow %s through node %s: result %q, want %q", first, nodes[2].IP, got, "echo first")
	}
	waitListed(ctx, t, clients[2], first)
	waitControllerAndUI(ctx, t, clients[0], net.JoinHostPort(nodeIPs[2], strconv.Itoa(uiPort)), first)

	// In flight across the kill: started through node 1, sleeping while node 1 dies.
	inFlight := startEcho(ctx, t, clients[0], "in flight", 3*time.Second)
	if err := nodes[0].Cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL node %s: %v", nodes[0].IP, err)
	}
	killed := time.Now()
	<-nodes[0].Exited

	// A new workflow through node 3, repeated with the same ID while the dead node's shards move (a start whose
	// answer was lost then returns the run it made).
	var after string
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 20*time.Second)
		run, err := clients[2].ExecuteWorkflow(actx, client.StartWorkflowOptions{
			ID: "after-kill", TaskQueue: taskQueue,
			TypedSearchAttributes: temporal.NewSearchAttributes(types.HostAttr.ValueSet(testHost)),
		}, echoWorkflow, "after kill", time.Duration(0))
		if err == nil {
			err = run.Get(actx, &after)
		}
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no new workflow completed through node %s within %s of node %s's SIGKILL (%d attempts): %v",
				nodes[2].IP, time.Since(killed).Round(time.Second), nodes[0].IP, attempt, err)
		}
		t.Logf("attempt %d after the kill: %v", attempt, err)
	}
	t.Logf("new workflow completed %.1f s after SIGKILL of node %s", time.Since(killed).Seconds(), nodes[0].IP)
	if after != "echo after kill" {
		t.Fatalf("workflow after-kill: result %q, want %q", after, "echo after kill")
	}
	if got := echoResult(ctx, t, clients[2], inFlight); got != "echo in flight" {
		t.Fatalf("workflow %s, in flight across the kill: result %q, want %q", inFlight, got, "echo in flight")
	}
	t.Logf("in-flight workflow completed %.1f s after SIGKILL", time.Since(killed).Seconds())
	waitListed(ctx, t, clients[1], inFlight)
	topology.WaitMembers(ctx, t, nodes[2], nodeIPs[1:])
}

// internodeHandshake opens a TLS connection to a server's internal service and waits for its first HTTP/2 frame:
// with TLS 1.3 a refused client certificate shows only there, after the client's side of the handshake.
func internodeHandshake(address string, conf *tls.Config) error {
	conf = conf.Clone()
	conf.NextProtos = []string{"h2"} // gRPC servers refuse a connection that did not negotiate HTTP/2
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", address, conf)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 64))
	return err
}

// refusesWrongPassword starts a node with a wrong PostgreSQL password: it must exit with an error that names the
// server and the user, and must not print the password.
func refusesWrongPassword(t *testing.T, bin string, pg topology.Postgres, frontendPort int) {
	t.Helper()
	const wrong = "not-the-password-4242"
	bad := pg
	bad.PasswordFile = filepath.Join(t.TempDir(), "wrong-password")
	if err := os.WriteFile(bad.PasswordFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "server")
	cmd.Env = append(append(topology.WithoutVMHA(os.Environ()), "VMHA_TEMPORAL_ADDRESS="+net.JoinHostPort(nodeIPs[0], strconv.Itoa(frontendPort)),
		"VMHA_UI_PORT=0", "VMHA_EMBEDDED_CONTROLLER=false"), bad.NodeEnv()...)
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("node with a wrong PostgreSQL password: exit %v (%v), want an error at once:\n%s", err, ctx.Err(), out)
	}
	if text := string(out); strings.Contains(text, wrong) || !strings.Contains(text, pg.Address) ||
		!strings.Contains(text, "password authentication failed") {
		t.Errorf("node with a wrong PostgreSQL password said %q: want the server %s and the reason, never the password", text, pg.Address)
	}
}

// echoWorkflow sleeps, then echoes its input through an activity: a timer, a workflow task and an activity task,
// which take history, matching and visibility of the cluster.
func echoWorkflow(ctx workflow.Context, in string, sleep time.Duration) (string, error) {
	if sleep > 0 {
		if err := workflow.Sleep(ctx, sleep); err != nil {
			return "", err
		}
	}
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second})
	var out string
	err := workflow.ExecuteActivity(ctx, echoActivity, in).Get(ctx, &out)
	return out, err
}

func echoActivity(_ context.Context, in string) (string, error) { return "echo " + in, nil }

func startEcho(ctx context.Context, t *testing.T, c client.Client, in string, sleep time.Duration) string {
	t.Helper()
	id := "echo-" + strings.ReplaceAll(in, " ", "-")
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: id, TaskQueue: taskQueue, WorkflowExecutionErrorWhenAlreadyStarted: true,
		TypedSearchAttributes: temporal.NewSearchAttributes(types.HostAttr.ValueSet(testHost)),
	}, echoWorkflow, in, sleep); err != nil {
		t.Fatalf("start workflow %s: %v", id, err)
	}
	return id
}

func echoResult(ctx context.Context, t *testing.T, c client.Client, id string) string {
	t.Helper()
	var out string
	if err := c.GetWorkflow(ctx, id, "").Get(ctx, &out); err != nil {
		t.Fatalf("result of workflow %s: %v", id, err)
	}
	return out
}

// waitControllerAndUI waits until two controller replicas (two processes) poll their queue, as seen through another
// node, and checks that the Web UI lists workflow id, through its node's mTLS frontend.
func waitControllerAndUI(ctx context.Context, t *testing.T, c client.Client, ui, id string) {
	t.Helper()
	var pollers []string
	for {
		resp, err := c.DescribeTaskQueue(ctx, types.ControllerTaskQueue, enumspb.TASK_QUEUE_TYPE_WORKFLOW)
		pollers = pollers[:0]
		for _, p := range resp.GetPollers() {
			if !slices.Contains(pollers, p.GetIdentity()) {
				pollers = append(pollers, p.GetIdentity())
			}
		}
		if err == nil && len(pollers) >= 2 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("controller replicas polling %s: %v, want two: %v (last error %v)", types.ControllerTaskQueue, pollers, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ui+"/api/v1/namespaces/"+namespace+"/workflows", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("web UI at %s: %v", ui, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), id) {
		t.Fatalf("web UI at %s does not list workflow %s: %s %.300s", ui, id, resp.Status, body)
	}
}

// waitListed waits until visibility lists workflow id as completed, found by vmha's VmhaHost search attribute.
func waitListed(ctx context.Context, t *testing.T, c client.Client, id string) {
	t.Helper()
	query := fmt.Sprintf("%s = %q AND WorkflowId = %q AND ExecutionStatus = 'Completed'", types.HostAttr.GetName(), testHost, id)
	for {
		resp, err := c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: namespace, Query: query})
		if err == nil && len(resp.GetExecutions()) == 1 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("workflow %s not listed by %q: %v (last error %v)", id, query, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
