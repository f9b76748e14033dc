package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"

	"vmha/infra/certs"
	"vmha/infra/temporalserver"
	"vmha/tests/topology"
	"vmha/types"
)

const (
	namespace = "vmha"
	// passwordEnv names the fake BMC password: the controller resolves it before every (fake) power reading.
	passwordEnv = "VMHA_BENCH_BMC_PASSWORD"
)

// server is an embedded Temporal server in a temp dir with a client on it.
type server struct {
	dir    string
	srv    *temporalserver.Server
	client client.Client
}

func startServer(ctx context.Context, logger *slog.Logger) (*server, error) {
	dir, err := os.MkdirTemp("", "vmha-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	srv, err := temporalserver.Start(ctx, temporalserver.Options{
		DataDir: dir, FrontendPort: port, Namespace: namespace,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	c, err := client.Dial(client.Options{HostPort: srv.FrontendAddress(), Namespace: namespace, Logger: sdkLogger(logger)})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dial %s: %w", srv.FrontendAddress(), err), srv.Stop(), os.RemoveAll(dir))
	}
	return &server{dir: dir, srv: srv, client: c}, nil
}

func (s *server) stop() error {
	s.client.Close()
	return errors.Join(s.srv.Stop(), os.RemoveAll(s.dir))
}

// sdkLogger keeps the SDK's warnings (failed polls, retries) and drops its per-task info lines.
func sdkLogger(logger *slog.Logger) sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("component", "sdk"))
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// probeTarget is the one TCP listener every simulated host's network probe connects to: it accepts and closes.
type probeTarget struct {
	ln net.Listener
}

func listenProbeTarget() (*probeTarget, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("probe target listener: %w", err)
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
	return &probeTarget{ln: ln}, nil
}

func (p *probeTarget) port() int    { return p.ln.Addr().(*net.TCPAddr).Port }
func (p *probeTarget) close() error { return p.ln.Close() }

// hostSpec is a simulated host: its probe hits the shared listener, its BMC is the controller's fake.
func hostSpec(name string, probePort int) types.HostSpec {
	return types.HostSpec{
		Name: name, Address: "127.0.0.1", ProbePort: probePort, LibvirtURI: "test:///" + name,
		BMC:      types.BMCSpec{Address: "127.0.0.1", Port: 1, User: "bench", PasswordEnv: passwordEnv},
		Capacity: types.Capacity{MemoryMiB: 256 * 1024, VCPUs: 64},
	}
}

// countMonitors counts running monitors in a state through visibility (empty state: all of them).
func countMonitors(ctx context.Context, c client.Client, state types.HostState) (int64, error) {
	q := fmt.Sprintf("WorkflowType = '%s' AND ExecutionStatus = 'Running'", types.HostMonitorWorkflow)
	if state != "" {
		q += fmt.Sprintf(" AND %s = '%s'", types.HostStateAttr.GetName(), state)
	}
	resp, err := c.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{Namespace: namespace, Query: q})
	if err != nil {
		return 0, fmt.Errorf("count monitors (%s): %w", q, err)
	}
	return resp.GetCount(), nil
}

// procSample is a process's (or a process group's) CPU time and memory from /proc.
type procSample struct {
	at     time.Time
	cpu    time.Duration // user + system
	rssKiB int64
	hwmKiB int64
	pssKiB int64 // only for a group: its processes' proportional share of memory, shared pages counted once
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

func sampleProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	stat, err := readStat(pid)
	if err != nil {
		return s, err
	}
	s.cpu = stat.cpu
	s.rssKiB, s.hwmKiB, err = readMemory(pid)
	return s, err
}

// procStat is what the bench reads of /proc/<pid>/stat.
type procStat struct {
	ppid int
	// cpu is user + system time; children is that of its children that ended and were waited for.
	cpu, children time.Duration
}

func readStat(pid int) (procStat, error) {
	var st procStat
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	// Fields after the command name, which may hold spaces, start after its closing parenthesis.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 15 {
		return st, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(fields))
	}
	var ticks [4]int64
	for i := range ticks {
		ticks[i], _ = strconv.ParseInt(fields[11+i], 10, 64)
	}
	st.ppid, _ = strconv.Atoi(fields[1])
	st.cpu = time.Duration(ticks[0]+ticks[1]) * time.Second / clockTicks
	st.children = time.Duration(ticks[2]+ticks[3]) * time.Second / clockTicks
	return st, nil
}

func readMemory(pid int) (rssKiB, hwmKiB int64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rssKiB, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwmKiB, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return rssKiB, hwmKiB, nil
}

func readPSS(pid int) (int64, error) {
	rollup, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, fmt.Errorf("read /proc/%d/smaps_rollup: %w", pid, err)
	}
	for _, line := range strings.Split(string(rollup), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, nil
}

// samplePostgres sums the PostgreSQL server listening on port over its processes: the postmaster (with the CPU of
// its children that ended: connections come and go), and each of its children alive now. RSS counts the shared
// buffers once per process that touched them; PSS splits them.
func samplePostgres(port string) (procSample, error) {
	s := procSample{at: time.Now()}
	postmaster, stats, err := postgresProcs(port)
	if err != nil {
		return s, err
	}
	for pid, st := range stats {
		if pid != postmaster && st.ppid != postmaster {
			continue
		}
		s.cpu += st.cpu
		if pid == postmaster {
			s.cpu += st.children
		}
		rss, _, err := readMemory(pid)
		pss, perr := readPSS(pid)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(perr, fs.ErrNotExist) {
			continue // a connection that just ended
		}
		if err = errors.Join(err, perr); err != nil {
			return s, err
		}
		s.rssKiB += rss
		s.pssKiB += pss
	}
	return s, nil
}

// postgresProcs finds the postmaster started with `-p port` (pg_ctl passes its options on) and reads the stat of
// every process, for its children.
func postgresProcs(port string) (int, map[int]procStat, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, nil, fmt.Errorf("list /proc: %w", err)
	}
	postmaster := 0
	stats := map[int]procStat{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // ended since the listing
		}
		stats[pid] = st
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		if i := slices.Index(args, "-p"); filepath.Base(args[0]) == "postgres" && i >= 0 && i+1 < len(args) && args[i+1] == port {
			postmaster = pid
		}
	}
	if postmaster == 0 {
		return 0, nil, fmt.Errorf("no postgres process started with -p %s in /proc", port)
	}
	return postmaster, stats, nil
}

// loadAverage is the machine's one-minute load average (0 when it cannot be read).
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	load, _ := strconv.ParseFloat(f[0], 64)
	return load
}

// cpuPercent is the CPU used between two samples, in percent of one core.
func cpuPercent(a, b procSample) float64 {
	return 100 * (b.cpu - a.cpu).Seconds() / b.at.Sub(a.at).Seconds()
}

// Topologies of the steady state (-topology).
const (
	topologyEmbedded = "embedded"
	topologyCluster  = "cluster"
)

// clusterName is the DNS name of every node (one A record each), in their certificates too.
const clusterName = "temporal.bench.test"

// backend is the Temporal a steady-state run measures against, with the bench's own client on it.
type backend struct {
	// dir holds the controller child's log.
	dir    string
	client client.Client
	// childEnv tells the controller child how to dial it (address, and for the cluster its certificate).
	childEnv []string
	// nodePIDs are the cluster nodes' processes and postgresPort the port of their PostgreSQL; empty for the
	// embedded server, which runs in the bench's own process.
	nodePIDs     []int
	postgresPort string
	stop         func() error
}

func startBackend(ctx context.Context, topo string, logger *slog.Logger) (*backend, error) {
	if topo == topologyCluster {
		return startCluster(ctx, logger)
	}
	srv, err := startServer(ctx, logger)
	if err != nil {
		return nil, err
	}
	return &backend{dir: srv.dir, client: srv.client, childEnv: []string{"VMHA_TEMPORAL_ADDRESS=" + srv.srv.FrontendAddress()},
		stop: srv.stop}, nil
}

// startCluster is the production topology of tests/production: PostgreSQL from Debian's packages in a temp dir,
// three `vmha server` nodes on it (VMHA_PERSISTENCE=postgres, mTLS with a server certificate each, no embedded
// controller, no UI, vmha's default 16 history shards) on 127.0.0.2-4, reached through one DNS name. The bench
// dials it as a controller (it starts the monitors and stands in for the hosts' workers); the controller child gets
// a controller certificate of its own.
func startCluster(ctx context.Context, logger *slog.Logger) (be *backend, err error) {
	// Each node has a loopback address of its own, as in tests/production.
	clusterIPs := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	tb := &benchTB{logger: logger}
	defer func() {
		if err != nil {
			tb.finish()
		}
	}()
	bin := topology.VMHABinary(tb)
	pg := topology.StartPostgres(tb)
	port := topology.FreeFrontendPort(tb, clusterIPs)
	ca := topology.NewCA(tb)
	own := ca.Issue(tb, certs.Request{Role: certs.RoleController, Name: "bench"})
	child := ca.Issue(tb, certs.Request{Role: certs.RoleController, Name: "bench-controller"})
	nodes := make([]*topology.Node, len(clusterIPs))
	for i, ip := range clusterIPs {
		server := ca.Issue(tb, certs.Request{Role: certs.RoleServer, Name: "node-" + ip, DNSNames: []string{clusterName},
			IPs: []net.IP{net.ParseIP(ip)}})
		env := append(pg.NodeEnv(), "VMHA_HISTORY_SHARDS=16",
			"VMHA_SERVER_TLS_CERT="+server.Cert, "VMHA_SERVER_TLS_KEY="+server.Key, "VMHA_SERVER_TLS_CLIENT_CA="+ca.Cert)
		nodes[i] = topology.StartNode(tb, bin, ip, port, env)
		// Cluster membership is the server role's to read.
		nodes[i].AdminTLS = ca.ClientTLS(tb, server, ip)
	}
	for _, n := range nodes {
		n.WaitReady(tb, 3*time.Minute)
	}
	joinCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	topology.WaitMembers(joinCtx, tb, nodes[0], clusterIPs)

	dns := topology.ServeDNS(tb, "127.0.0.1:0", clusterName, clusterIPs)
	address := "dns://" + dns + "/" + net.JoinHostPort(clusterName, strconv.Itoa(port))
	c, err := client.DialContext(ctx, client.Options{HostPort: address, Namespace: namespace, Logger: sdkLogger(logger),
		ConnectionOptions: client.ConnectionOptions{TLS: ca.ClientTLS(tb, own, clusterName)}})
	if err != nil {
		return nil, fmt.Errorf("dial the cluster at %s: %w", address, err)
	}
	_, pgPort, _ := net.SplitHostPort(pg.Address)
	be = &backend{dir: tb.TempDir(), client: c, childEnv: append([]string{"VMHA_TEMPORAL_ADDRESS=" + address},
		ca.ClientEnv(child, clusterName)...), postgresPort: pgPort}
	for _, n := range nodes {
		be.nodePIDs = append(be.nodePIDs, n.Cmd.Process.Pid)
	}
	be.stop = func() error {
		c.Close()
		tb.finish()
		return nil
	}
	logger.Info("cluster serving", "nodes", clusterIPs, "address", address, "postgres", pg.Address)
	return be, nil
}

// benchTB stands in for *testing.T where the bench starts the production topology: cleanups run when the run
// ends (finish), and a fatal error (or a skip: PostgreSQL missing) runs them and then ends the bench with the
// message, since nothing can be measured without the topology.
type benchTB struct {
	logger   *slog.Logger
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (t *benchTB) Helper() {}

func (t *benchTB) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *benchTB) TempDir() string {
	dir, err := os.MkdirTemp("", "vmha-bench-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (t *benchTB) Logf(format string, args ...any) { t.logger.Info(fmt.Sprintf(format, args...)) }

func (t *benchTB) Fatal(args ...any)                 { t.exit(fmt.Sprint(args...)) }
func (t *benchTB) Fatalf(format string, args ...any) { t.exit(fmt.Sprintf(format, args...)) }
func (t *benchTB) Skip(args ...any)                  { t.exit("cannot start the cluster: " + fmt.Sprint(args...)) }
func (t *benchTB) Skipf(format string, args ...any) {
	t.exit("cannot start the cluster: " + fmt.Sprintf(format, args...))
}

func (t *benchTB) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *benchTB) exit(msg string) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	t.finish()
	fmt.Fprintln(os.Stderr, "bench:", msg)
	os.Exit(1)
}

// finish runs the cleanups, last registered first, once each.
func (t *benchTB) finish() {
	for {
		t.mu.Lock()
		if len(t.cleanups) == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[len(t.cleanups)-1]
		t.cleanups = t.cleanups[:len(t.cleanups)-1]
		t.mu.Unlock()
		f()
	}
}
