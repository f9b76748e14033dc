package lab_test

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/server/api/adminservice/v1"

	"vmha/infra/certs"
	"vmha/tests/topology"
	"vmha/types"
)

// clusterName is the DNS name of the management cluster: one A record per node, as README tells sites to set up.
const clusterName = "temporal.lab.test"

// mgmtIPs are the management machines on the lab's bridge: each runs a Temporal cluster node; the first two also
// run a controller replica. (Hosts are 10.250.0.11 and up.)
var mgmtIPs = []string{"10.250.0.2", "10.250.0.3", "10.250.0.4"}

// managementCluster is vmha's production topology on the lab: PostgreSQL, three cluster nodes, two controllers.
type managementCluster struct {
	pg          topology.Postgres
	port        int
	nodes       []*topology.Node
	nodeEnv     [][]string
	controllers []*exec.Cmd
}

// clusterRow is one run of a kill-anything scenario.
type clusterRow struct {
	vms       int
	recovered time.Duration // power-off to every VM of the host running elsewhere
	disturbed time.Duration // power-off to the fault
	note      string
}

// TestLabCluster is issue 9's "kill anything, lose nothing" on the lab: real hosts, BMCs, libvirtd and QEMU, with
// vmha's management side as a production cluster (PostgreSQL, three `vmha server` nodes on their own addresses, two
// `vmha controller` replicas, every connection mTLS, every client dialing the cluster by its DNS name). A host
// loses power, and as soon as vmha has declared it dead and started its recovery, one part of the management side
// is killed: the node that owns the host monitor's history shard, the controller replica running the recovery, or
// PostgreSQL (a crash and a restart). Every VM of the host must run again exactly once. Last, a management machine
// (a node and a controller) goes away for good, its address silent, and then a host loses power: the survivors
// recover it. The recoveries run one VM at a time (VMHA_RECOVERY_CONCURRENCY=1) so that each fault lands while the
// recovery is still under way; the test checks that it did.
func TestLabCluster(t *testing.T) {
	// VMHA_BENCH_CLUSTER=N runs the whole sequence N times (make bench-cluster) and prints min/median/max.
	rounds := 1
	fmt.Sscan(os.Getenv("VMHA_BENCH_CLUSTER"), &rounds)
	w, c := setUpCluster(t)
	none := func(*testing.T, string) string { return "" }
	faults := []struct {
		name, label string
		run         func(t *testing.T) clusterRow
	}{
		{"0_nothing_killed", "nothing killed", func(t *testing.T) clusterRow {
			return w.clusterPowerLoss(t, none)
		}},
		{"a_monitor_shard_owner_killed", "SIGKILL of the node owning the monitor's history shard", func(t *testing.T) clusterRow {
			r := w.clusterPowerLoss(t, c.killShardOwner)
			c.restartNode(t, w, c.down())
			return r
		}},
		{"b_recovery_controller_killed", "SIGKILL of the controller replica running the recovery", func(t *testing.T) clusterRow {
			return w.clusterPowerLoss(t, c.killRecoveryController(w))
		}},
		{"c_postgres_restarted", "PostgreSQL crashes (immediate stop) and starts again", func(t *testing.T) clusterRow {
			return w.clusterPowerLoss(t, func(t *testing.T, x string) string {
				c.pg.Stop(t, "immediate")
				c.pg.Start(t)
				return "PostgreSQL"
			})
		}},
		{"d_management_machine_gone_for_good", "a management machine (node and controller) gone for good 10 s before", func(t *testing.T) clusterRow {
			c.powerOffManagementMachine(t, 0)
			// Long enough for the cluster's membership to drop it (a node is suspect, then faulty, within seconds).
			time.Sleep(10 * time.Second)
			r := w.clusterPowerLoss(t, none)
			c.restoreManagementMachine(t, w, 0)
			return r
		}},
	}
	results := map[string][]clusterRow{}
	for round := 1; round <= rounds; round++ {
		for _, f := range faults {
			name := f.name
			if rounds > 1 {
				name = fmt.Sprintf("%s_round%d", f.name, round)
			}
			w.scenario(t, name, func(t *testing.T) { results[f.name] = append(results[f.name], f.run(t)) })
		}
	}
	fmt.Println("\n| fault while the recovery runs | runs | VMs on the host | fault after the power-off (median) | power-off to every VM running again: min / median / max |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, f := range faults {
		rows := results[f.name]
		var recovered, disturbed []time.Duration
		vms := map[int]bool{}
		for _, r := range rows {
			recovered = append(recovered, r.recovered)
			if r.disturbed > 0 {
				disturbed = append(disturbed, r.disturbed)
			}
			vms[r.vms] = true
		}
		if len(rows) == 0 {
			continue
		}
		at := "-"
		if len(disturbed) > 0 {
			_, med, _ := spread(disturbed)
			at = fmt.Sprintf("%.2f s", med)
		}
		lo, med, hi := spread(recovered)
		fmt.Printf("| %s | %d | %v | %s | %.2f / %.2f / %.2f s |\n", f.label, len(rows), slices.Sorted(maps.Keys(vms)), at, lo, med, hi)
	}
}

func setUpCluster(t *testing.T) (*world, *managementCluster) {
	c := &managementCluster{port: topology.FreeFrontendPort(t, []string{"127.0.0.1"})}
	dnsAt := net.JoinHostPort(labBridgeIP, strconv.Itoa(freeUDPPort(t)))
	w := newWorld(t, fmt.Sprintf("dns://%s/%s:%d", dnsAt, clusterName, c.port), clusterName)
	w.upLab(t)
	for _, ip := range mgmtIPs {
		if out, err := exec.Command("ip", "addr", "add", ip+"/24", "dev", "labbr0").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add %s: %v: %s", ip, err, out)
		}
	}
	topology.ServeDNS(t, dnsAt, clusterName, mgmtIPs)
	c.pg = topology.StartPostgres(t)
	for i, ip := range mgmtIPs {
		server := w.ca.Issue(t, certs.Request{Role: certs.RoleServer, Name: "mgmt" + strconv.Itoa(i+1),
			DNSNames: []string{clusterName}, IPs: []net.IP{net.ParseIP(ip)}})
		env := append(c.pg.NodeEnv(), "VMHA_SERVER_TLS_CERT="+server.Cert, "VMHA_SERVER_TLS_KEY="+server.Key,
			"VMHA_SERVER_TLS_CLIENT_CA="+w.ca.Cert)
		c.nodeEnv = append(c.nodeEnv, env)
		n := topology.StartNode(t, w.bin, ip, c.port, env)
		n.AdminTLS = w.ca.ClientTLS(t, server, ip)
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		n.WaitReady(t, 2*time.Minute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topology.WaitMembers(ctx, t, c.nodes[0], mgmtIPs)
	c.controllers = make([]*exec.Cmd, 2)
	for i := range c.controllers {
		c.startController(w, i)
	}
	w.client = w.dial(t)
	w.applyInventory(t)
	w.waitHealthy(t, w.lab.Hosts()...)
	for i := 1; i <= 6; i++ {
		w.createVM(t, fmt.Sprintf("vm%d", i))
	}
	return w, c
}

// clusterPowerLoss powers off the host running the most VMs; the moment vmha has declared it dead and its recovery
// has started, disturb (if any) breaks something. Every VM of the host must then run elsewhere exactly once, each
// recovered by one RecoverVM, and the host's recovery must have been under way when the fault hit.
func (w *world) clusterPowerLoss(t *testing.T, disturb func(t *testing.T, x string) string) clusterRow {
	x := w.byLoad(t)[0]
	vms := vmsOn(w.running(t), x)
	before := map[string]int{}
	for _, vm := range vms {
		before[vm] = len(w.recoveriesOfVM(t, w.uuidOf(t, x, vm)))
	}
	t.Logf("powering off %s, running %v", x, vms)
	off := w.powerOff(t, x)
	var recovery string
	w.eventually(t, 60*time.Second, "the recovery of "+x+" started", func() error {
		if w.hooks.firstState(x, off, types.HostDead).IsZero() {
			return fmt.Errorf("%s not declared dead yet", x)
		}
		ids := w.hostRecoveries(t, x, off)
		if len(ids) == 0 {
			return fmt.Errorf("no HostRecovery of %s yet", x)
		}
		recovery = ids[0]
		return nil
	})
	r := clusterRow{vms: len(vms)}
	if r.note = disturb(t, x); r.note != "" {
		r.disturbed = time.Since(off)
		// The fault must have hit a recovery under way, or it proved nothing.
		desc, err := w.client.DescribeWorkflowExecution(context.Background(), recovery, "")
		if err != nil {
			t.Logf("describe %s right after the fault: %v (the fault may still be healing)", recovery, err)
		} else if desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			t.Fatalf("%s had already ended (%v) when the fault hit: the scenario proved nothing", recovery,
				desc.GetWorkflowExecutionInfo().GetStatus())
		}
		t.Logf("%s %.2f s after the power-off, while %s ran", r.note, r.disturbed.Seconds(), recovery)
	}
	w.waitRunningOff(t, 3*time.Minute, vms, x)
	r.recovered = time.Since(off)
	w.checkCopies(t)
	for _, vm := range vms {
		at, err := w.where(t, vm)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(w.recoveriesOfVM(t, w.uuidOf(t, at, vm))); n != before[vm]+1 {
			t.Errorf("%s: %d more RecoverVM workflows, want exactly one", vm, n-before[vm])
		}
	}
	t.Logf("every VM of %s running again %.2f s after its power-off", x, r.recovered.Seconds())
	w.logTimeline(t, recovery, off)
	for _, id := range w.recoveriesOfVM(t, w.uuidOf(t, w.mustWhere(t, vms[0]), vms[0])) {
		w.logTimeline(t, id, off)
	}
	w.waitState(t, 2*time.Minute, x, types.HostRecovered)
	w.powerOnAndWait(t, x)
	return r
}

// killShardOwner SIGKILLs the node owning the history shard of the dead host's monitor (as the cluster says).
func (c *managementCluster) killShardOwner(t *testing.T, x string) string {
	n := c.shardOwner(t, types.HostMonitorID(x))
	n.Kill(t)
	return "node " + n.IP + " (owner of the monitor's shard)"
}

// shardOwner asks a live node which node's history service owns workflowID's shard.
func (c *managementCluster) shardOwner(t *testing.T, workflowID string) *topology.Node {
	for _, asked := range c.nodes {
		select {
		case <-asked.Exited:
			continue
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := asked.Admin(t).DescribeMutableState(ctx, &adminservice.DescribeMutableStateRequest{
			Namespace: namespace, Execution: &commonpb.WorkflowExecution{WorkflowId: workflowID}})
		cancel()
		if err != nil {
			t.Logf("node %s: describe %s: %v", asked.IP, workflowID, err)
			continue
		}
		host, _, _ := net.SplitHostPort(resp.GetHistoryAddr())
		for _, n := range c.nodes {
			if n.IP == host {
				t.Logf("%s: shard %s, history on %s", workflowID, resp.GetShardId(), resp.GetHistoryAddr())
				return n
			}
		}
		t.Fatalf("%s: history address %q is no node's", workflowID, resp.GetHistoryAddr())
	}
	t.Fatalf("no node could tell who owns %s's shard", workflowID)
	return nil
}

// down is the index of the node that is not running (the one a scenario killed).
func (c *managementCluster) down() int {
	for i, n := range c.nodes {
		select {
		case <-n.Exited:
			return i
		default:
		}
	}
	return -1
}

// restartNode starts node i again, as systemd would after a crash, and waits until the cluster has it back.
func (c *managementCluster) restartNode(t *testing.T, w *world, i int) {
	if i < 0 {
		t.Fatal("no node is down")
	}
	adminTLS := c.nodes[i].AdminTLS
	// The test's own t, not the scenario's: the node must outlive the scenario that restarts it.
	c.nodes[i] = topology.StartNode(w.t, w.bin, mgmtIPs[i], c.port, c.nodeEnv[i])
	c.nodes[i].AdminTLS = adminTLS
	c.nodes[i].WaitReady(t, 2*time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topology.WaitMembers(ctx, t, c.nodes[i], mgmtIPs)
}

// killRecoveryController SIGKILLs the controller replica that processed the recovery's latest workflow task,
// then starts it again (its restart is not awaited by the recovery: the other replica takes over).
func (c *managementCluster) killRecoveryController(w *world) func(t *testing.T, x string) string {
	return func(t *testing.T, x string) string {
		ids := w.hostRecoveries(t, x, time.Now().Add(-time.Minute))
		identity := w.lastWorkflowTaskIdentity(t, ids[0])
		for i, cmd := range c.controllers {
			if cmd != nil && strings.HasPrefix(identity, strconv.Itoa(cmd.Process.Pid)+"@") {
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				_ = cmd.Wait()
				c.startController(w, i)
				return fmt.Sprintf("controller on mgmt%d (pid %d, ran %s's last workflow task)", i+1, cmd.Process.Pid, ids[0])
			}
		}
		t.Fatalf("%s's last workflow task ran on %q, none of the controllers %v", ids[0], identity, c.controllers)
		return ""
	}
}

// lastWorkflowTaskIdentity is the identity of the worker that started the workflow's latest workflow task.
func (w *world) lastWorkflowTaskIdentity(t *testing.T, workflowID string) string {
	var identity string
	w.eventually(t, 10*time.Second, "a workflow task of "+workflowID, func() error {
		it := w.client.GetWorkflowHistory(context.Background(), workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			e, err := it.Next()
			if err != nil {
				return err
			}
			if a := e.GetWorkflowTaskStartedEventAttributes(); a != nil {
				identity = a.GetIdentity()
			}
		}
		if identity == "" {
			return fmt.Errorf("no workflow task started yet")
		}
		return nil
	})
	return identity
}

// powerOffManagementMachine kills management machine i's node and controller and takes its address off the
// network, so that the others' connections to it hang as they would to a machine without power.
func (c *managementCluster) powerOffManagementMachine(t *testing.T, i int) {
	c.nodes[i].Kill(t)
	if i < len(c.controllers) && c.controllers[i] != nil {
		if err := c.controllers[i].Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = c.controllers[i].Wait()
		c.controllers[i] = nil
	}
	if out, err := exec.Command("ip", "addr", "del", mgmtIPs[i]+"/24", "dev", "labbr0").CombinedOutput(); err != nil {
		t.Fatalf("ip addr del %s: %v: %s", mgmtIPs[i], err, out)
	}
}

func (w *world) mustWhere(t *testing.T, vm string) string {
	h, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// restoreManagementMachine brings management machine i back: its address, its node, its controller.
func (c *managementCluster) restoreManagementMachine(t *testing.T, w *world, i int) {
	if out, err := exec.Command("ip", "addr", "add", mgmtIPs[i]+"/24", "dev", "labbr0").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add %s: %v: %s", mgmtIPs[i], err, out)
	}
	c.restartNode(t, w, i)
	if i < len(c.controllers) {
		c.startController(w, i)
	}
}

// startController starts the controller replica of management machine i; it recovers one VM at a time.
func (c *managementCluster) startController(w *world, i int) {
	c.controllers[i] = w.startAs(fmt.Sprintf("controller-mgmt%d", i+1), "controller",
		append(w.ca.ClientEnv(w.controllerCert, clusterName), "VMHA_RECOVERY_CONCURRENCY=1")...)
}

// freeUDPPort is a UDP port free on every address right now.
func freeUDPPort(t *testing.T) int {
	conn, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).Port
}
