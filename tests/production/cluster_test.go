// Package production runs vmha's production topology on this machine: PostgreSQL from Debian's packages, and
// `vmha server` processes forming one Temporal cluster on it, each on its own loopback address.
package production

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/api/adminservice/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

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
	pg := startPostgres(t)
	bin := vmhaBinary(t)
	frontendPort := freeFrontendPort(t, nodeIPs)
	refusesWrongPassword(t, bin, pg, frontendPort)
	ca := newCA(t)
	// The test's clients act as a controller: every call in vmha's namespace, and cluster-wide reads.
	me := ca.issue(t, certs.Request{Role: certs.RoleController, Name: "cluster-test"})

	// Nodes 2 and 3 run as README's management machines do, each with a controller replica, node 3 with the Web UI
	// too; node 1, the one killed, runs neither.
	uiPort := freePort(t, nodeIPs[2])
	controller := []string{"VMHA_EMBEDDED_CONTROLLER=true", "VMHA_METRICS_ADDR="}
	ui := []string{"VMHA_UI_ADDRESS=" + nodeIPs[2], "VMHA_UI_PORT=" + strconv.Itoa(uiPort)}

	started := time.Now()
	nodes := make([]*node, len(nodeIPs))
	for i, ip := range nodeIPs {
		server := ca.issue(t, certs.Request{Role: certs.RoleServer, Name: "node-" + ip, DNSNames: []string{clusterName},
			IPs: []net.IP{net.ParseIP(ip)}})
		env := append(pg.nodeEnv(),
			"VMHA_SERVER_TLS_CERT="+server.Cert, "VMHA_SERVER_TLS_KEY="+server.Key, "VMHA_SERVER_TLS_CLIENT_CA="+ca.cert)
		if i > 0 {
			env = append(env, controller...)
		}
		if i == 2 {
			env = append(env, ui...)
		}
		nodes[i] = startNode(t, bin, ip, frontendPort, env)
		nodes[i].tls = ca.clientTLS(t, me, ip)
		// Cluster administration (DescribeCluster) is the server role's alone: the test reads membership as the node.
		nodes[i].adminTLS = ca.clientTLS(t, server, ip)
	}
	for _, n := range nodes {
		n.waitReady(t, 2*time.Minute)
		t.Logf("node %s serving %.1f s after the three started together", n.ip, n.readyAt.Sub(started).Seconds())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitMembers(ctx, t, nodes[1], nodeIPs)

	// A client without a certificate is refused by a cluster node as by the embedded server.
	anonymous := ca.clientTLS(t, certs.Files{}, nodes[2].ip)
	if c, err := client.DialContext(ctx, client.Options{HostPort: nodes[2].address, Namespace: namespace, Logger: quiet,
		ConnectionOptions: client.ConnectionOptions{TLS: anonymous}}); err == nil {
		c.Close()
		t.Errorf("node %s accepted a client without a certificate", nodes[2].ip)
	}

	clients := make([]client.Client, len(nodes))
	for i, n := range nodes {
		c, err := client.DialContext(ctx, client.Options{HostPort: n.address, Namespace: namespace, Logger: quiet,
			ConnectionOptions: client.ConnectionOptions{TLS: n.tls}})
		if err != nil {
			t.Fatalf("dial node %s: %v", n.ip, err)
		}
		defer c.Close()
		clients[i] = c
	}
	// The worker dials the cluster by its DNS name, as README tells hypervisors and controllers to: the SDK resolves
	// every node's address and spreads its calls over them, so it must carry on through the others when node 1 dies.
	dnsServer := serveDNS(t, clusterName, nodeIPs)
	byName, err := client.DialContext(ctx, client.Options{
		HostPort: "dns://" + dnsServer + "/" + net.JoinHostPort(clusterName, strconv.Itoa(frontendPort)), Namespace: namespace,
		Logger: quiet, ConnectionOptions: client.ConnectionOptions{TLS: ca.clientTLS(t, me, clusterName)},
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
		t.Fatalf("workflow %s through node %s: result %q, want %q", first, nodes[2].ip, got, "echo first")
	}
	waitListed(ctx, t, clients[2], first)
	waitControllerAndUI(ctx, t, clients[0], net.JoinHostPort(nodeIPs[2], strconv.Itoa(uiPort)), first)

	// In flight across the kill: started through node 1, sleeping while node 1 dies.
	inFlight := startEcho(ctx, t, clients[0], "in flight", 3*time.Second)
	if err := nodes[0].cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL node %s: %v", nodes[0].ip, err)
	}
	killed := time.Now()
	<-nodes[0].exited

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
				nodes[2].ip, time.Since(killed).Round(time.Second), nodes[0].ip, attempt, err)
		}
		t.Logf("attempt %d after the kill: %v", attempt, err)
	}
	t.Logf("new workflow completed %.1f s after SIGKILL of node %s", time.Since(killed).Seconds(), nodes[0].ip)
	if after != "echo after kill" {
		t.Fatalf("workflow after-kill: result %q, want %q", after, "echo after kill")
	}
	if got := echoResult(ctx, t, clients[2], inFlight); got != "echo in flight" {
		t.Fatalf("workflow %s, in flight across the kill: result %q, want %q", inFlight, got, "echo in flight")
	}
	t.Logf("in-flight workflow completed %.1f s after SIGKILL", time.Since(killed).Seconds())
	waitListed(ctx, t, clients[1], inFlight)
	waitMembers(ctx, t, nodes[2], nodeIPs[1:])
}

// refusesWrongPassword starts a node with a wrong PostgreSQL password: it must exit with an error that names the
// server and the user, and must not print the password.
func refusesWrongPassword(t *testing.T, bin string, pg postgres, frontendPort int) {
	t.Helper()
	const wrong = "not-the-password-4242"
	bad := pg
	bad.passwordFile = filepath.Join(t.TempDir(), "wrong-password")
	if err := os.WriteFile(bad.passwordFile, []byte(wrong+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "server")
	cmd.Env = append(append(withoutVMHA(os.Environ()), "VMHA_TEMPORAL_ADDRESS="+net.JoinHostPort(nodeIPs[0], strconv.Itoa(frontendPort)),
		"VMHA_UI_PORT=0", "VMHA_EMBEDDED_CONTROLLER=false"), bad.nodeEnv()...)
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("node with a wrong PostgreSQL password: exit %v (%v), want an error at once:\n%s", err, ctx.Err(), out)
	}
	if text := string(out); strings.Contains(text, wrong) || !strings.Contains(text, pg.address) ||
		!strings.Contains(text, "password authentication failed") {
		t.Errorf("node with a wrong PostgreSQL password said %q: want the server %s and the reason, never the password", text, pg.address)
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

// waitMembers waits until every ring of the cluster (frontend, history, matching, worker) has exactly the nodes on
// ips, as node n describes the cluster.
func waitMembers(ctx context.Context, t *testing.T, n *node, ips []string) {
	t.Helper()
	address := n.address
	creds := insecure.NewCredentials()
	if n.adminTLS != nil {
		creds = credentials.NewTLS(n.adminTLS)
	}
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("connect to %s: %v", address, err)
	}
	defer conn.Close()
	admin := adminservice.NewAdminServiceClient(conn)
	want := slices.Clone(ips)
	slices.Sort(want)
	var last string
	for {
		resp, err := admin.DescribeCluster(ctx, &adminservice.DescribeClusterRequest{})
		if err == nil {
			rings := resp.GetMembershipInfo().GetRings()
			ok := len(rings) == 4
			var desc []string
			for _, ring := range rings {
				var hosts []string
				for _, m := range ring.GetMembers() {
					host, _, _ := net.SplitHostPort(m.GetIdentity())
					hosts = append(hosts, host)
				}
				slices.Sort(hosts)
				ok = ok && slices.Equal(hosts, want)
				desc = append(desc, fmt.Sprintf("%s: %v", ring.GetRole(), hosts))
			}
			last = strings.Join(desc, "; ")
			if ok {
				t.Logf("membership seen by %s: %s", address, last)
				return
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cluster membership seen by %s never became %v in every ring: %s", address, want, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// postgres is a PostgreSQL server the test started, with a password-protected user for Temporal.
type postgres struct {
	address      string
	user         string
	passwordFile string
}

// startPostgres runs Debian's PostgreSQL in a temporary directory on 127.0.0.1 and a free port, with scram-sha-256
// password authentication, as an unprivileged user when the test runs as root (initdb refuses root).
func startPostgres(t *testing.T) postgres {
	t.Helper()
	initdbs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(initdbs) == 0 {
		t.Skip("PostgreSQL's binaries are missing (/usr/lib/postgresql/*/bin/initdb): `infra/deps.sh test` installs Debian's postgresql")
	}
	binDir := filepath.Dir(initdbs[len(initdbs)-1])
	dir, err := os.MkdirTemp("", "vmha-postgres-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	// chown hands a path to the user PostgreSQL runs as.
	chown := func(string) error { return nil }
	var runAs []string
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root and no postgres user to run PostgreSQL as (initdb refuses root): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		chown = func(path string) error { return os.Chown(path, uid, gid) }
		runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	password := fmt.Sprintf("test-%d", rand.Int64())
	pwForInitdb := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwForInitdb, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, pwForInitdb} {
		if err := chown(path); err != nil {
			t.Fatal(err)
		}
	}
	run := func(name string, args ...string) {
		t.Helper()
		argv := append(append(slices.Clone(runAs), filepath.Join(binDir, name)), args...)
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			t.Fatalf("%s %v: %v\n%s\n%s", name, args, err, out, log)
		}
	}
	data := filepath.Join(dir, "data")
	run("initdb", "-D", data, "-U", "temporal", "--pwfile", pwForInitdb, "-A", "scram-sha-256", "--no-sync")
	port := freePort(t, "127.0.0.1")
	// Each node opens a few dozen connections (four services, each with a persistence and a visibility pool).
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=400", port, dir)
	run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "postgres.log"), "-w", "start")
	t.Cleanup(func() { run("pg_ctl", "-D", data, "-m", "fast", "-w", "stop") })

	// The nodes read the password from their own copy, as root would from /etc/vmha.
	pwFile := filepath.Join(t.TempDir(), "postgres-password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return postgres{address: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), user: "temporal", passwordFile: pwFile}
}

// node is one `vmha server` process, a node of the cluster.
type node struct {
	ip, address string
	cmd         *exec.Cmd
	log         string
	exited      chan struct{}
	// tls is how the test's clients dial it, adminTLS how it reads cluster membership; nil: plain gRPC.
	tls, adminTLS *tls.Config
	// startedAt is when the process was started, readyAt when it said its frontend serves.
	startedAt, readyAt time.Time
}

// nodeEnv are the settings of a cluster node on this PostgreSQL.
func (pg postgres) nodeEnv() []string {
	return []string{
		"VMHA_PERSISTENCE=postgres",
		"VMHA_POSTGRES_ADDRESS=" + pg.address,
		"VMHA_POSTGRES_USER=" + pg.user,
		"VMHA_POSTGRES_PASSWORD_FILE=" + pg.passwordFile,
		"VMHA_HISTORY_SHARDS=8",
	}
}

// startNode starts `vmha server` listening on ip with env (VMHA_PERSISTENCE and what goes with it).
func startNode(t *testing.T, bin, ip string, frontendPort int, env []string) *node {
	t.Helper()
	n := &node{ip: ip, address: net.JoinHostPort(ip, strconv.Itoa(frontendPort)), exited: make(chan struct{})}
	n.log = filepath.Join(t.TempDir(), "node-"+ip+".log")
	out, err := os.Create(n.log)
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(bin, "server")
	n.cmd.Env = append(append(withoutVMHA(os.Environ()),
		"VMHA_TEMPORAL_ADDRESS="+n.address,
		"VMHA_UI_PORT=0",
		"VMHA_EMBEDDED_CONTROLLER=false",
		"VMHA_LOG_LEVEL=warn",
	), env...)
	n.cmd.Stdout, n.cmd.Stderr = out, out
	n.startedAt = time.Now()
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", ip, err)
	}
	go func() {
		_ = n.cmd.Wait()
		_ = out.Close()
		close(n.exited)
	}()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			text, _ := os.ReadFile(n.log)
			t.Logf("log of node %s:\n%s", ip, text)
		}
	})
	return n
}

// waitReady waits until the node says its frontend serves (vmha server prints it once the namespace is served).
func (n *node) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		text, _ := os.ReadFile(n.log)
		if strings.Contains(string(text), "Temporal frontend: "+n.address) {
			n.readyAt = time.Now()
			return
		}
		select {
		case <-n.exited:
			t.Fatalf("node %s exited before serving (%v):\n%s", n.ip, n.cmd.ProcessState, text)
		case <-deadline:
			t.Fatalf("node %s not serving within %s:\n%s", n.ip, timeout, text)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop ends the node as systemd would: SIGTERM, then SIGKILL after a grace period.
func (n *node) stop() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

func withoutVMHA(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "VMHA_") })
}

// vmhaBinary is $VMHA_BIN (make test sets it) or a fresh build.
func vmhaBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("VMHA_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "vmha")
	if out, err := exec.Command("go", "build", "-o", bin, "vmha").CombinedOutput(); err != nil {
		t.Fatalf("go build vmha: %v\n%s", err, out)
	}
	return bin
}

// freeFrontendPort finds a frontend port whose whole layout (the eight ports of servicePorts) is free on every ip.
func freeFrontendPort(t *testing.T, ips []string) int {
	t.Helper()
	for range 50 {
		// Membership ports (300 below) must stay under 32768: Temporal stores them as a smallint.
		port := 10300 + rand.IntN(22000)
		if allFree(ips, port) {
			return port
		}
	}
	t.Fatal("no free port layout for the cluster nodes after 50 tries")
	return 0
}

func allFree(ips []string, frontendPort int) bool {
	for _, ip := range ips {
		for _, offset := range []int{0, 1, 2, 6} {
			for _, port := range []int{frontendPort + offset, frontendPort + offset - 300} {
				l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
				if err != nil {
					return false
				}
				_ = l.Close()
			}
		}
	}
	return true
}

func freePort(t *testing.T, ip string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testCA is a CA made with vmha's own certificate code (`vmha certs`), in a temporary directory.
type testCA struct{ dir, cert string }

func newCA(t *testing.T) testCA {
	t.Helper()
	dir := t.TempDir()
	files, err := certs.CreateCA(dir, "cluster test CA", 48*time.Hour)
	if err != nil {
		t.Fatalf("create CA: %v", err)
	}
	return testCA{dir: dir, cert: files.Cert}
}

func (ca testCA) issue(t *testing.T, req certs.Request) certs.Files {
	t.Helper()
	req.ValidFor = 24 * time.Hour
	files, err := certs.Issue(ca.dir, req)
	if err != nil {
		t.Fatalf("issue %s certificate %s: %v", req.Role, req.Name, err)
	}
	return files
}

// clientTLS presents the certificate in files (none when empty) and verifies the server as serverName.
func (ca testCA) clientTLS(t *testing.T, files certs.Files, serverName string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(ca.cert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("CA %s: no certificate", ca.cert)
	}
	conf := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if files.Cert != "" {
		cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		if err != nil {
			t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf
}
