// Package lab_test runs vmha's fault scenarios against the lab: real libvirtd + QEMU hosts in namespaces, real
// ipmi_sim BMCs, the real vmha binary as server, controller and hypervisor workers. Every scenario checks the VMs
// with virsh on every host. It needs root and the lab's packages (make test installs them); it skips otherwise.
package lab_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"vmha/activities"
	"vmha/activities/notify"
	"vmha/infra/certs"
	"vmha/infra/lab"
	"vmha/tests/topology"
	"vmha/types"
)

const (
	// labBridgeIP is this machine's address on the lab's bridge, where the hosts reach vmha's management side.
	labBridgeIP  = "10.250.0.1"
	temporalAddr = labBridgeIP + ":17233"
	uiPort       = "18233"
	namespace    = "vmha"
	webhookKey   = "lab-webhook-secret"
	metricsAddr  = "127.0.0.1:19464"
	// hostMemoryMiB caps what vmha may place on a lab host (inventory capacity: 4 VMs), so overcommit is checkable
	// even though every lab host shares this machine's memory.
	hostMemoryMiB = 256
	vmMemoryMiB   = 64
)

// world is the running lab with vmha on it.
type world struct {
	t   *testing.T
	lab *lab.Lab
	bin string
	// env is how vmha's processes and CLI run: the address of Temporal, the operator's certificate.
	env []string
	dir string
	// address is Temporal's frontend as every client dials it; tls verifies it as serverName.
	address, serverName string
	// ca signed every certificate of the lab: the server's, each hypervisor's (lab.sh VMHA_LAB_PKI), the
	// controller's (also the test's own client: it acts where only a controller may), the operator's (the CLI).
	ca             topology.CA
	controllerCert certs.Files
	operatorCert   certs.Files
	client         client.Client
	controller     *exec.Cmd
	hooks          *webhook
	copies         copyWatch
}

func TestLab(t *testing.T) {
	w := setUp(t)
	var x string
	w.scenario(t, "1_power_loss", func(t *testing.T) { x = w.powerLoss(t, "vm1") })
	w.scenario(t, "4_old_host_comes_back", func(t *testing.T) { w.oldHostComesBack(t, x, "vm1") })
	// Issue 7's scenario 2 too: with the controller reading the storage heartbeats, a cut host whose heartbeat goes
	// on is isolated for the whole 60 s, never hung.
	w.scenario(t, "2_network_blockage_heartbeat_alive", func(t *testing.T) { w.networkBlockage(t, "vm1", 60*time.Second) })
	w.scenario(t, "3_bmc_unreachable_or_wrong_password", func(t *testing.T) { w.bmcUnusable(t) })
	w.scenario(t, "5_manual_failover_with_temporal_cli", func(t *testing.T) { w.manualFailover(t, "vm1") })
	w.scenario(t, "6_controller_killed_mid_recovery", func(t *testing.T) { w.controllerKilled(t, "vm1") })
	w.scenario(t, "7_two_hosts_off_at_once", func(t *testing.T) { w.twoHostsOff(t) })
	w.scenario(t, "8_web_ui_lists_the_recovery", func(t *testing.T) { w.webUI(t, x) })
	// Issue 13: never lost.
	w.scenario(t, "13a_share_unmounted_on_a_survivor", w.shareUnmountedOnSurvivor)
	w.scenario(t, "13b_unreadable_catalog_files", w.catalogGarbage)
	w.scenario(t, "13c_no_capacity_then_capacity_raised", w.noCapacity)
	w.scenario(t, "13d_retired_and_reapplied_host", w.retiredAndReapplied)
	w.scenario(t, "13e_fenced_signal_to_a_healthy_host", w.fencedSignalToHealthyHost)
	// Issue 6: never twice.
	w.scenario(t, "6a_virsh_opt_in", w.virshOptIn)
	w.scenario(t, "6b_virsh_autostart", w.virshAutostart)
	w.scenario(t, "6c_live_migration", w.liveMigration)
	w.scenario(t, "6d_lost_start_and_failed_cleanup", w.lostStartNoSecondCopy)
	w.scenario(t, "6e_disk_lease_refuses_a_second_start", w.leaseRefusesSecondStart)
	w.scenario(t, "6f_planted_qemu_commandline", w.plantedCommandline)
	// Issue 7: hung hosts, lost storage, dead BMCs, the watchdog.
	w.scenario(t, "i7_1_hang_fenced_through_ipmi", w.hangFenced)
	w.scenario(t, "i7_3_storage_lost", w.storageLost)
	w.scenario(t, "i7_4_bmc_dead_with_its_host", w.bmcDeadWithHost)
	w.scenario(t, "i7_5_watchdog", w.watchdogScenario)
}

// TestBenchLab repeats the power-loss scenario VMHA_BENCH_LAB times and prints min / median / max seconds,
// split into detection, confirmation and restart (make bench-lab).
func TestBenchLab(t *testing.T) {
	runs := 0
	fmt.Sscan(os.Getenv("VMHA_BENCH_LAB"), &runs)
	if runs == 0 {
		t.Skip("set VMHA_BENCH_LAB=N (make bench-lab) to measure")
	}
	// VMHA_BENCH_LAB_FAULTS picks the faults: power, hang or both (the default).
	faults := cmp.Or(os.Getenv("VMHA_BENCH_LAB_FAULTS"), "power,hang")
	w := setUp(t)
	if strings.Contains(faults, "power") {
		var bare []time.Duration
		if x, err := w.where(t, "vm1"); err == nil {
			// On a host vm1 is not on: one of the hosts it is restarted on.
			for _, h := range w.lab.Hosts() {
				if h != x {
					bare = w.bareStart(t, h, runs)
					break
				}
			}
		}
		printRoundTrips(w.roundTrips(t, "hv1", 200))
		var samples []milestones
		for i := 0; i < runs; i++ {
			x, _ := w.where(t, "vm1")
			samples = append(samples, w.timedPowerLoss(t, "vm1"))
			w.powerOnAndWait(t, x)
		}
		printPhaseTable(samples, bare)
	}
	if strings.Contains(faults, "hang") {
		var hangs []hangTiming
		for i := 0; i < runs; i++ {
			x, _ := w.where(t, "vm1")
			hangs = append(hangs, w.timedHang(t, x, []string{"vm1"}))
			w.powerOnAndWait(t, x)
		}
		printHangTable(hangs)
	}
}

func setUp(t *testing.T) *world {
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root (network namespaces, libvirtd)")
	}
	for _, tool := range []string{"libvirtd", "ipmi_sim", "ipmitool", "tini", "qemu-system-x86_64", "virsh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: run make deps", tool)
		}
	}
	w := newWorld(t, temporalAddr, labBridgeIP)
	w.env = append(w.env, "VMHA_UI_PORT="+uiPort, "VMHA_DATA_DIR="+filepath.Join(w.dir, "data"))
	w.upLab(t)
	l := w.lab
	server := w.ca.Issue(t, certs.Request{Role: certs.RoleServer, Name: "lab-server",
		IPs: []net.IP{net.ParseIP(labBridgeIP), net.ParseIP("127.0.0.1")}})
	w.start("server", "VMHA_EMBEDDED_CONTROLLER=false", "VMHA_SERVER_TLS_CERT="+server.Cert,
		"VMHA_SERVER_TLS_KEY="+server.Key, "VMHA_SERVER_TLS_CLIENT_CA="+w.ca.Cert)
	w.client = w.dial(t)
	w.startController()
	w.applyInventory(t)
	w.waitHealthy(t, l.Hosts()...)
	w.createVM(t, "vm1")
	return w
}

// newWorld is a world whose processes dial Temporal at address, verifying its certificate as serverName, with
// certificates from a new CA; the lab is not up yet.
func newWorld(t *testing.T, address, serverName string) *world {
	w := &world{t: t, dir: t.TempDir(), hooks: newWebhook(t), address: address, serverName: serverName}
	w.bin = topology.VMHABinary(t)
	w.ca = topology.NewCA(t)
	w.controllerCert = w.ca.Issue(t, certs.Request{Role: certs.RoleController, Name: "lab-controller"})
	w.operatorCert = w.ca.Issue(t, certs.Request{Role: certs.RoleOperator, Name: "lab-operator"})
	w.env = append(append(os.Environ(),
		"VMHA_TEMPORAL_ADDRESS="+address, "VMHA_NAMESPACE="+namespace, "VMHA_METRICS_ADDR=127.0.0.1:0",
		"VMHA_WEBHOOK_URL="+w.hooks.url, "VMHA_WEBHOOK_SECRET="+webhookKey, "VMHA_LOG_LEVEL=info"),
		w.ca.ClientEnv(w.operatorCert, serverName)...)
	return w
}

// upLab brings up the lab's four hosts, their workers dialing w.address with a hypervisor certificate each, and
// tears it down at cleanup.
func (w *world) upLab(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Options{N: 4, VMHABin: w.bin, Env: []string{"VMHA_TEMPORAL_ADDRESS=" + w.address,
		"VMHA_NAMESPACE=" + namespace, "VMHA_LAB_PKI=" + w.ca.Dir, "VMHA_TLS_SERVER_NAME=" + w.serverName}})
	if err != nil {
		t.Fatal(err)
	}
	w.lab = l
	// The controller reads every host's storage heartbeat from its own mount of the share (here the same
	// directory); an unknown host is reported again every 5 s, so that scenario i7_4 sees the reminders.
	w.env = append(w.env, "VMHA_SHARE_PATH="+filepath.Join(l.Dir, "share"), "VMHA_UNKNOWN_REMINDER=5s")
	t.Cleanup(func() {
		if t.Failed() {
			status, _ := l.Status(context.Background())
			t.Logf("lab status at failure:\n%s", status)
			for _, h := range l.Hosts() {
				if b, err := os.ReadFile(filepath.Join(l.Dir, h, "worker.log")); err == nil {
					t.Logf("%s worker.log (tail):\n%s", h, tail(string(b), 30))
				}
			}
		}
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
}

// start runs `vmha ROLE` in the background, logging to the test's directory; it is killed at cleanup.
func (w *world) start(role string, env ...string) *exec.Cmd { return w.startAs(role, role, env...) }

// startAs is start with a name of its own for the log (several processes of one role).
func (w *world) startAs(name, role string, env ...string) *exec.Cmd {
	log, err := os.OpenFile(filepath.Join(w.dir, name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		w.t.Fatal(err)
	}
	cmd := exec.Command(w.bin, role)
	cmd.Env = append(append([]string{}, w.env...), env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		w.t.Fatalf("start vmha %s: %v", role, err)
	}
	w.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if w.t.Failed() {
			b, _ := os.ReadFile(log.Name())
			w.t.Logf("vmha %s log (tail):\n%s", name, tail(string(b), 40))
		}
	})
	return cmd
}

func (w *world) startController(env ...string) {
	w.controller = w.start("controller", append(append([]string{"VMHA_METRICS_ADDR=" + metricsAddr},
		w.ca.ClientEnv(w.controllerCert, w.serverName)...), env...)...)
}

// restartController kills the controller and starts it again with env on top of the lab's.
func (w *world) restartController(t *testing.T, env ...string) {
	if err := w.controller.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = w.controller.Wait()
	w.startController(env...)
}

// metric reads one sample from the controller's /metrics, as Prometheus would scrape it.
func metric(t *testing.T, sample string) float64 {
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape controller metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, sample+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(line, sample+" "), &v)
			return v
		}
	}
	t.Fatalf("controller metrics lack %s", sample)
	return 0
}

func (w *world) dial(t *testing.T) client.Client {
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := client.Dial(client.Options{HostPort: w.address, Namespace: namespace, Logger: quiet{},
			ConnectionOptions: client.ConnectionOptions{TLS: w.ca.ClientTLS(t, w.controllerCert, w.serverName)}})
		if err == nil {
			if _, err = c.CheckHealth(context.Background(), nil); err == nil {
				t.Cleanup(c.Close)
				return c
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporal at %s: %v", w.address, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cliArgs are args for the Temporal CLI, dialing Temporal as the holder of cert.
func (w *world) cliArgs(cert certs.Files, args ...string) []string {
	return append(args, "--address", w.address, "--namespace", namespace, "--tls-cert-path", cert.Cert,
		"--tls-key-path", cert.Key, "--tls-ca-path", w.ca.Cert, "--tls-server-name", w.serverName)
}

// vmha runs an operator command and returns its output.
func (w *world) vmha(t *testing.T, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.bin, args...)
	cmd.Env = w.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("vmha %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// applyInventory registers the lab's hosts with a memory cap, so overcommit is visible.
func (w *world) applyInventory(t *testing.T) {
	path, err := w.lab.Inventory(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		lines = append(lines, line)
		if strings.HasPrefix(strings.TrimSpace(line), "- name:") {
			indent := strings.Repeat(" ", strings.Index(line, "-")+2)
			lines = append(lines, fmt.Sprintf("%scapacity: {memoryMiB: %d}", indent, hostMemoryMiB))
		}
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	w.vmha(t, "apply", "-f", path)
}

func (w *world) createVM(t *testing.T, name string) {
	image := filepath.Join(w.lab.Dir, "share", "images", "tiny.qcow2")
	w.vmha(t, "create-vm", "--name", name, "--image", image, "--vcpus", "1", "--memory-mib", fmt.Sprint(vmMemoryMiB))
	w.eventually(t, 30*time.Second, name+" running once", func() error { _, err := w.where(t, name); return err })
}

// where is the one host running the VM; more than one running copy fails the test at once.
func (w *world) where(t *testing.T, vm string) (string, error) {
	states, err := w.lab.DomainStates(context.Background())
	if err != nil {
		return "", err
	}
	var running []string
	for host, doms := range states {
		if doms[vm] == "running" {
			running = append(running, host)
		}
	}
	switch len(running) {
	case 0:
		return "", fmt.Errorf("%s runs nowhere (%v)", vm, states)
	case 1:
		return running[0], nil
	}
	t.Fatalf("%s runs %d times: on %v", vm, len(running), running)
	return "", nil
}

// domainFacts are what must survive a recovery: identity, NIC and disk.
func (w *world) domainFacts(t *testing.T, host, vm string) string {
	var facts []string
	for _, cmd := range [][]string{{"domuuid", vm}, {"domiflist", vm}, {"domblklist", vm}} {
		out, err := w.lab.Virsh(context.Background(), host, cmd...)
		if err != nil {
			t.Fatal(err)
		}
		facts = append(facts, strings.Join(strings.Fields(out), " "))
	}
	return strings.Join(facts, " | ")
}

func (w *world) catalogEntry(t *testing.T, uuid string) types.VMRecord {
	b, err := os.ReadFile(filepath.Join(w.lab.Dir, "share", "vmha", "catalog", uuid+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var e activities.CatalogEntry
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatal(err)
	}
	return e.VMRecord
}

func (w *world) uuidOf(t *testing.T, host, vm string) string {
	out, err := w.lab.Virsh(context.Background(), host, "domuuid", vm)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// hostState reads the monitor's state search attribute, as the Web UI does.
func (w *world) hostState(host string) types.HostState {
	resp, err := w.client.DescribeWorkflowExecution(context.Background(), types.HostMonitorID(host), "")
	if err != nil {
		return ""
	}
	var state string
	if p := resp.GetWorkflowExecutionInfo().GetSearchAttributes().GetIndexedFields()[types.HostStateAttr.GetName()]; p != nil {
		_ = json.Unmarshal(p.GetData(), &state)
	}
	return types.HostState(state)
}

func (w *world) waitState(t *testing.T, d time.Duration, host string, want ...types.HostState) {
	w.eventually(t, d, fmt.Sprintf("%s in %v", host, want), func() error {
		got := w.hostState(host)
		for _, s := range want {
			if got == s {
				return nil
			}
		}
		return fmt.Errorf("%s is %q", host, got)
	})
}

func (w *world) waitHealthy(t *testing.T, hosts ...string) {
	for _, h := range hosts {
		w.waitState(t, 90*time.Second, h, types.HostHealthy)
	}
}

// workflows lists workflow IDs matching a visibility query.
func (w *world) workflows(t *testing.T, query string) []string {
	resp, err := w.client.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{Query: query, PageSize: 1000})
	if err != nil {
		t.Fatalf("list %s: %v", query, err)
	}
	var ids []string
	for _, e := range resp.GetExecutions() {
		ids = append(ids, e.GetExecution().GetWorkflowId())
	}
	sort.Strings(ids)
	return ids
}

// recoveriesOfVM lists the RecoverVM workflows of one VM (their IDs start with its UUID).
func (w *world) recoveriesOfVM(t *testing.T, uuid string) []string {
	var ids []string
	for _, id := range w.workflows(t, fmt.Sprintf("WorkflowType = '%s'", types.RecoverVMWorkflow)) {
		if strings.HasPrefix(id, "vmha-recover-vm-"+uuid+"-") {
			ids = append(ids, id)
		}
	}
	return ids
}

func (w *world) eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		w.checkCopies(t)
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still not %s: %v", d, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *world) powerOnAndWait(t *testing.T, host string) {
	if err := w.lab.PowerOn(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	w.waitHealthy(t, host)
}

// timedPowerLoss powers the VM's host off and watches every host until the VM runs elsewhere, exactly once, then
// reads the recovery's milestones.
func (w *world) timedPowerLoss(t *testing.T, vm string) milestones {
	x, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	uuid := w.uuidOf(t, x, vm)
	// The power-off command's start is the instant of the fault (the host dies within the command's ~0.1 s):
	// a conservative origin for every phase.
	off := time.Now()
	if err := w.lab.PowerOff(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	var target string
	w.eventually(t, 60*time.Second, vm+" running on another host", func() error {
		h, err := w.where(t, vm)
		if err == nil && h == x {
			t.Fatalf("%s still runs on %s after its power-off", vm, x)
		}
		target = h
		return err
	})
	running := time.Now()
	dead := w.hooks.firstState(x, off, types.HostDead)
	var confirmed time.Time
	w.eventually(t, 10*time.Second, "vm.recovery.done event for "+vm, func() error {
		if confirmed = w.hooks.first(types.EventRecoveryDone, vm, off); confirmed.IsZero() {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	m := w.milestonesOf(t, x, vm, uuid, off, dead, running, confirmed)
	t.Logf("%s: power-off of %s -> running on %s in %.2fs (%+v)", vm, x, target, running.Sub(off).Seconds(), m)
	return m
}

// 1. Power loss: the VM runs elsewhere exactly once, same UUID, MAC and disk; the catalog moved.
func (w *world) powerLoss(t *testing.T, vm string) string {
	x, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	before := w.domainFacts(t, x, vm)
	uuid := w.uuidOf(t, x, vm)
	entry := w.catalogEntry(t, uuid)
	tm := w.timedPowerLoss(t, vm)
	y, _ := w.where(t, vm)
	if after := w.domainFacts(t, y, vm); after != before {
		t.Fatalf("the VM changed in the move:\nbefore %s\nafter  %s", before, after)
	}
	w.eventually(t, 10*time.Second, "catalog moved", func() error {
		moved := w.catalogEntry(t, uuid)
		if moved.Owner != y || moved.Generation != entry.Generation+1 {
			return fmt.Errorf("catalog owner %s generation %d, want %s and %d", moved.Owner, moved.Generation, y, entry.Generation+1)
		}
		return nil
	})
	if ids := w.recoveriesOfVM(t, uuid); len(ids) != 1 {
		t.Fatalf("want one RecoverVM workflow, got %v", ids)
	}
	w.waitState(t, 10*time.Second, x, types.HostRecovered)
	if n := metric(t, `vmha_vm_recoveries_total{outcome="done"}`); n < 1 {
		t.Fatalf("vmha_vm_recoveries_total{outcome=\"done\"} = %v after a recovery", n)
	}
	if n := metric(t, "vmha_detection_seconds_count"); n < 1 {
		t.Fatalf("vmha_detection_seconds_count = %v after a host died", n)
	}
	if n := metric(t, `vmha_host_state{host="`+x+`",state="recovered"}`); n != 1 {
		t.Fatalf("vmha_host_state of %s recovered = %v", x, n)
	}
	t.Logf("scenario 1: power-off to running %.2fs (first miss %.2fs, dead %.2fs, start issued %.2fs)",
		tm.running.Seconds(), tm.firstMiss.Seconds(), tm.dead.Seconds(), tm.startIssued.Seconds())
	return x
}

// 4. The old host comes back: the VM is not started there, its stale definition is gone, one copy runs.
func (w *world) oldHostComesBack(t *testing.T, x, vm string) {
	w.powerOnAndWait(t, x)
	time.Sleep(3 * time.Second) // give a wrong start every chance to happen
	y, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	if y == x {
		t.Fatalf("%s runs on %s, the host it was recovered from", vm, x)
	}
	w.eventually(t, 15*time.Second, "stale definition dropped on "+x, func() error {
		states, err := w.lab.DomainStates(context.Background())
		if err != nil {
			return err
		}
		if s, ok := states[x][vm]; ok {
			return fmt.Errorf("%s still defined on %s (%s)", vm, x, s)
		}
		return nil
	})
}

// 2. Network blockage: the host is cut but runs its VM; nobody starts it elsewhere, not even tries.
func (w *world) networkBlockage(t *testing.T, vm string, hold time.Duration) {
	y, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	uuid := w.uuidOf(t, y, vm)
	recoveriesBefore := w.recoveriesOfVM(t, uuid)
	if err := w.lab.Cut(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = w.lab.Restore(context.Background(), y)
		}
	}()
	w.waitState(t, 15*time.Second, y, types.HostIsolated)
	end := time.Now().Add(hold)
	for time.Now().Before(end) {
		if h, err := w.where(t, vm); err != nil || h != y {
			t.Fatalf("during the blockage %s must run on %s only: %v %v", vm, y, h, err)
		}
		if s := w.hostState(y); s != types.HostIsolated {
			t.Fatalf("%s is %s during the blockage, want isolated", y, s)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if after := w.recoveriesOfVM(t, uuid); len(after) != len(recoveriesBefore) {
		t.Fatalf("a recovery of %s was attempted during the blockage: %v", vm, after)
	}
	if ids := w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s' AND StartTime > '%s'", types.HostRecoveryWorkflow,
		types.HostAttr.GetName(), y, end.Add(-hold).UTC().Format(time.RFC3339))); len(ids) != 0 {
		t.Fatalf("host recovery started for the isolated host: %v", ids)
	}
	if !w.hooks.sawState(y, types.HostIsolated) {
		t.Fatalf("no isolated alert for %s reached the webhook", y)
	}
	// Isolated because its storage heartbeat went on: the controller read it from the share all along.
	if st := w.monitorStatus(t, y); st.Last.Heartbeat != types.HeartbeatAlive {
		t.Fatalf("%s's last probe says storage heartbeat %q, want alive (does the controller read the share?)", y, st.Last.Heartbeat)
	}
	if err := w.lab.Restore(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	restored = true
	w.waitHealthy(t, y)
	if h, err := w.where(t, vm); err != nil || h != y {
		t.Fatalf("after the blockage %s must still run on %s: %v %v", vm, y, h, err)
	}
}

// 3. BMC refusing our password while the host is unreachable: unknown, alert, no recovery.
func (w *world) bmcUnusable(t *testing.T) {
	host := w.lab.Hosts()[len(w.lab.Hosts())-1]
	pwFile, err := w.lab.PasswordFile(host)
	if err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	if err := os.WriteFile(pwFile, []byte("wrong-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(pwFile, good, 0o600)
	if err := w.lab.Cut(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	defer w.lab.Restore(context.Background(), host)
	w.waitState(t, 20*time.Second, host, types.HostUnknown)
	time.Sleep(5 * time.Second)
	if s := w.hostState(host); s != types.HostUnknown {
		t.Fatalf("%s is %s, want unknown", host, s)
	}
	if ids := w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s' AND StartTime > '%s'", types.HostRecoveryWorkflow,
		types.HostAttr.GetName(), host, since.UTC().Format(time.RFC3339))); len(ids) != 0 {
		t.Fatalf("recovery started for a host whose power is unknown: %v", ids)
	}
	if !w.hooks.sawState(host, types.HostUnknown) {
		t.Fatalf("no unknown alert for %s reached the webhook", host)
	}
	if err := os.WriteFile(pwFile, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := w.lab.Restore(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	w.waitHealthy(t, host)
}

// 5. Manual failover with the plain Temporal CLI: the running host is fenced and its VM moves.
func (w *world) manualFailover(t *testing.T, vm string) {
	cli := temporalCLI(t)
	x, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	id := types.ManualFailoverID(x)
	out, err := exec.Command(cli, w.cliArgs(w.operatorCert, "workflow", "start",
		"--task-queue", types.ControllerTaskQueue, "--type", types.ManualFailoverWorkflow, "--workflow-id", id,
		"--input", fmt.Sprintf(`{"host":%q,"fence":true,"reason":"lab scenario 5"}`, x))...).CombinedOutput()
	if err != nil {
		t.Fatalf("temporal workflow start: %v\n%s", err, out)
	}
	w.eventually(t, 60*time.Second, vm+" moved off "+x, func() error {
		h, err := w.where(t, vm)
		if err == nil && h == x {
			return fmt.Errorf("still on %s", x)
		}
		return err
	})
	var res struct {
		Fenced bool `json:"fenced"`
	}
	if err := w.client.GetWorkflow(context.Background(), id, "").Get(context.Background(), &res); err != nil || !res.Fenced {
		t.Fatalf("failover result %+v, %v: want fenced", res, err)
	}
	if states, _ := w.lab.DomainStates(context.Background()); states[x] != nil {
		t.Fatalf("%s still powered after the fenced failover", x)
	}
	w.powerOnAndWait(t, x)
}

// 6. The controller is SIGKILLed in the middle of a recovery and restarted: the VM runs exactly once.
func (w *world) controllerKilled(t *testing.T, vm string) {
	x, err := w.where(t, vm)
	if err != nil {
		t.Fatal(err)
	}
	uuid := w.uuidOf(t, x, vm)
	before := len(w.recoveriesOfVM(t, uuid))
	if err := w.lab.PowerOff(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	w.eventually(t, 30*time.Second, "a recovery of "+vm+" under way", func() error {
		if n := len(w.recoveriesOfVM(t, uuid)); n == before {
			return fmt.Errorf("no new RecoverVM yet")
		}
		return nil
	})
	if err := w.controller.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = w.controller.Wait()
	time.Sleep(time.Second)
	w.startController()
	w.eventually(t, 90*time.Second, vm+" running elsewhere", func() error {
		h, err := w.where(t, vm)
		if err == nil && h == x {
			return fmt.Errorf("still on %s", x)
		}
		return err
	})
	if n := len(w.recoveriesOfVM(t, uuid)); n != before+1 {
		t.Fatalf("want exactly one more RecoverVM for %s, got %d", vm, n-before)
	}
	time.Sleep(3 * time.Second)
	if _, err := w.where(t, vm); err != nil {
		t.Fatal(err)
	}
	w.powerOnAndWait(t, x)
}

// 7. Two hosts of four lose power within a second: every VM comes back once and no host exceeds its capacity.
func (w *world) twoHostsOff(t *testing.T) {
	for i := 2; i <= 7; i++ {
		w.createVM(t, fmt.Sprintf("vm%d", i))
	}
	vms := []string{"vm1", "vm2", "vm3", "vm4", "vm5", "vm6", "vm7"}
	perHost := map[string][]string{}
	for _, vm := range vms {
		h, err := w.where(t, vm)
		if err != nil {
			t.Fatal(err)
		}
		perHost[h] = append(perHost[h], vm)
	}
	hosts := w.lab.Hosts()
	sort.Slice(hosts, func(i, j int) bool { return len(perHost[hosts[i]]) > len(perHost[hosts[j]]) })
	a, b := hosts[0], hosts[1]
	t.Logf("VMs per host before: %v; powering off %s and %s", perHost, a, b)
	var wg sync.WaitGroup
	for _, h := range []string{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.lab.PowerOff(context.Background(), h); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	w.eventually(t, 90*time.Second, "every VM running", func() error {
		for _, vm := range vms {
			h, err := w.where(t, vm)
			if err != nil {
				return err
			}
			if h == a || h == b {
				return fmt.Errorf("%s on powered-off %s", vm, h)
			}
		}
		return nil
	})
	count := map[string]int{}
	for _, vm := range vms {
		h, _ := w.where(t, vm)
		count[h]++
	}
	for h, n := range count {
		if n*vmMemoryMiB > hostMemoryMiB {
			t.Fatalf("%s runs %d VMs of %d MiB: beyond its %d MiB capacity", h, n, vmMemoryMiB, hostMemoryMiB)
		}
	}
	t.Logf("VMs per host after: %v", count)
	w.powerOnAndWait(t, a)
	w.powerOnAndWait(t, b)
}

// webhook receives vmha's notifications and checks each signature.
type webhook struct {
	url    string
	mu     sync.Mutex
	events []receivedEvent
	bad    int
}

type receivedEvent struct {
	types.Event
	received time.Time
}

func newWebhook(t *testing.T) *webhook {
	h := &webhook{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		var e types.Event
		if notify.Verify(webhookKey, body, r.Header.Get(notify.SignatureHeader), time.Now(), notify.MaxSignatureAge) != nil || json.Unmarshal(body, &e) != nil {
			h.bad++
			rw.WriteHeader(http.StatusUnauthorized)
			return
		}
		h.events = append(h.events, receivedEvent{Event: e, received: time.Now()})
	})}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		if h.bad > 0 {
			t.Errorf("%d webhook calls with a bad signature", h.bad)
		}
	})
	h.url = "http://" + ln.Addr().String() + "/hook"
	return h
}

func (h *webhook) sawState(host string, state types.HostState) bool {
	return !h.firstState(host, time.Time{}, state).IsZero()
}

// firstState is when the host first entered one of the states after since, by the event's own clock.
func (h *webhook) firstState(host string, since time.Time, states ...types.HostState) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	var first time.Time
	for _, e := range h.events {
		if e.Kind != types.EventHostState || e.Host != host || e.At.Before(since) {
			continue
		}
		for _, s := range states {
			if e.To == s && (first.IsZero() || e.At.Before(first)) {
				first = e.At
			}
		}
	}
	return first
}

// first is when the first event of that kind about the VM happened after since.
func (h *webhook) first(kind types.EventKind, vm string, since time.Time) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.events {
		if e.Kind == kind && e.VM == vm && !e.At.Before(since) {
			return e.At
		}
	}
	return time.Time{}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type quiet struct{}

func (quiet) Debug(string, ...interface{}) {}
func (quiet) Info(string, ...interface{})  {}
func (quiet) Warn(string, ...interface{})  {}
func (quiet) Error(string, ...interface{}) {}
