package workflows

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	sdkpb "go.temporal.io/api/sdk/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

// Tests of issue 13 ("never lost"): every dead host's HA VMs come back, or the host says loudly that they did not.

// runMonitor runs hv1's monitor over the probes until retired after d.
func runMonitor(t *testing.T, c *cluster, d time.Duration, setUp func(env envWithCallbacks), probes ...types.Probe) {
	t.Helper()
	env := newEnv(t, c, defaultPolicy)
	watchReturns(env, probes...)
	if setUp != nil {
		setUp(env)
	}
	retireAfter(env, d)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
}

type envWithCallbacks interface {
	RegisterDelayedCallback(func(), time.Duration)
	SignalWorkflow(string, interface{})
}

// bigVM gives hv1 one VM that fits nowhere until a host gets more room.
func bigVM(c *cluster) {
	big := vm("big", 1, "hv1")
	big.MemoryMiB = 6000
	c.vms = []types.VMRecord{big}
}

func (c *cluster) addRoom(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.hosts {
		if c.hosts[i].Spec.Name == host {
			c.hosts[i].Stats.MemoryTotalMiB, c.hosts[i].Stats.MemoryFreeMiB = 16384, 16000
		}
	}
}

// Item 1 and 2: a recovery that leaves a VM behind is recovery-failed, not recovered, and is retried until capacity
// returns.
func TestMonitorRecoveryThatLeavesAVMBehindIsRetried(t *testing.T) {
	c := newCluster("hv1", "hv2")
	bigVM(c)
	runMonitor(t, c, time.Hour, func(env envWithCallbacks) {
		env.RegisterDelayedCallback(func() { c.addRoom("hv2") }, 10*time.Minute)
	}, healthyProbe, deadProbe)
	chain := strings.Join(c.stateChain(), ",")
	if !strings.HasPrefix(chain, "healthy,dead,recovering,recovery-failed,recovering") || !strings.HasSuffix(chain, "recovering,recovered") {
		t.Fatalf("state chain %s: want recovery-failed after the first round, retries, and recovered once hv2 has room", chain)
	}
	if got := c.callsWith("commit"); len(got) != 1 || got[0] != "commit big@hv2" {
		t.Fatalf("commits %v, want one on hv2 after it had room", got)
	}
	var failed types.Event
	for _, e := range c.events {
		if e.To == types.HostRecoveryFailed {
			failed = e
			break
		}
	}
	if !strings.Contains(failed.Reason, "0 of 1 VMs recovered") || !strings.Contains(failed.Reason, "big: no eligible target") {
		t.Fatalf("recovery-failed reason %q must say which VM was left behind and why", failed.Reason)
	}
}

// Item 13: a host whose VM could not go anywhere gets it back when it is healthy again.
func TestMonitorReturningHostGetsItsLeftBehindVMsBack(t *testing.T) {
	c := newCluster("hv1", "hv2")
	bigVM(c)
	runMonitor(t, c, time.Hour, nil, healthyProbe, deadProbe, deadProbe, deadProbe, isolatedProbe, healthyProbe)
	if got := strings.Join(c.callsWith(""), ","); !strings.Contains(got, "define big@hv1,start big@hv1,running big@hv1,commit big@hv1") {
		t.Fatalf("calls %s: the VM left behind was not started again on its returning owner", got)
	}
	if chain := c.stateChain(); chain[len(chain)-1] != "healthy" {
		t.Fatalf("state chain %v, want healthy at the end", chain)
	}
}

// Item 3: incidents of a host whose monitor started afresh (re-applied, reset) never reuse a workflow ID.
func TestMonitorIncidentIDsNeverRepeat(t *testing.T) {
	var ids []string
	for i, start := range []time.Time{time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)} {
		c := newCluster("hv1", "hv2")
		c.vms = []types.VMRecord{vm("web", 1, "hv1")}
		env := newEnv(t, c, defaultPolicy)
		env.SetStartTime(start)
		watchReturns(env, healthyProbe, deadProbe)
		retireAfter(env, time.Hour)
		env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
		if err := env.GetWorkflowError(); err != nil {
			t.Fatal(err)
		}
		if len(c.listedBy) != 1 {
			t.Fatalf("run %d: recoveries %v, want one", i, c.listedBy)
		}
		ids = append(ids, c.listedBy[0])
	}
	if ids[0] == ids[1] {
		t.Fatalf("two incidents of two monitor runs share the workflow ID %s: the second would be refused", ids[0])
	}
}

// Item 7: a fenced signal the BMC contradicts moves nothing and raises an alert.
func TestMonitorFencedSignalIsCheckedWithTheBMC(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	c.power["hv1"] = types.PowerOn
	runMonitor(t, c, time.Hour, func(env envWithCallbacks) {
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(activities.SignalFenced, activities.FenceNotice{By: "a typo"})
		}, 10*time.Minute)
	}, healthyProbe)
	if got := c.callsWith(""); len(got) != 0 {
		t.Fatalf("a fenced signal for a host whose BMC says on moved VMs: %v", got)
	}
	if !slices.Contains(c.eventKinds(), string(types.EventHostAlert)) {
		t.Fatalf("events %v: want a host.alert", c.eventKinds())
	}
	// The lab's scenario 13e showed "the BMC says power on (<nil>)": the alert says what the BMC said, no Go nil.
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.events {
		if e.Kind == types.EventHostAlert && (strings.Contains(e.Reason, "<nil>") || !strings.Contains(e.Reason, "the BMC says power on")) {
			t.Fatalf("host.alert reason %q", e.Reason)
		}
	}
}

// Item 1: a manual failover (fenced signal) of a recovered host whose catalog still gives it VMs recovers them.
func TestMonitorFencedSignalOnRecoveredHostRunsAnotherRound(t *testing.T) {
	c := newCluster("hv1", "hv2")
	runMonitor(t, c, time.Hour, func(env envWithCallbacks) {
		env.RegisterDelayedCallback(func() {
			c.mu.Lock()
			c.vms = append(c.vms, vm("late", 1, "hv1"))
			c.mu.Unlock()
			env.SignalWorkflow(activities.SignalFenced, activities.FenceNotice{By: "vmha-failover-hv1", Began: time.Now().Add(24 * time.Hour)})
		}, 10*time.Minute)
	}, healthyProbe, deadProbe)
	if got := c.callsWith("commit"); len(got) != 1 || got[0] != "commit late@hv2" {
		t.Fatalf("commits %v: the failover of a recovered host did not recover the VM it still owned", got)
	}
}

// Item 8: a signal that arrives while the monitor waits for slow notifications before continuing as new is kept.
func TestMonitorKeepsSignalsAcrossContinueAsNew(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.notifyDelay = 2 * time.Minute
	env := newEnv(t, c, defaultPolicy)
	watchReturns(env, healthyProbe)
	env.RegisterDelayedCallback(func() { env.SetCurrentHistoryLength(historyLimit + 1) }, 90*time.Second)
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(activities.SignalMaintenance, true) }, 150*time.Second)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	var can *workflow.ContinueAsNewError
	if err := env.GetWorkflowError(); !errors.As(err, &can) {
		t.Fatalf("want continue-as-new, got %v", err)
	}
	var next activities.MonitorInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	if !next.Maintenance {
		t.Fatalf("the maintenance signal sent while notifications were pending was lost: %+v", next)
	}
}

// Item 11: host.recovery.done carries the time from death to the end of the round, for vmha_host_recovery_seconds.
func TestHostRecoveryDoneCarriesItsDuration(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	c.notifyDelay = time.Second // a recovery takes time: its notifications are awaited
	runMonitor(t, c, time.Hour, nil, healthyProbe, deadProbe)
	for _, e := range c.events {
		if e.Kind == types.EventHostRecoveryDone && e.Seconds <= 0 {
			t.Fatalf("host.recovery.done without a duration: %+v", e)
		}
	}
}

// Item 5: unreadable catalog files do not stop the recovery of the readable VMs, and keep the host recovery-failed.
func TestHostRecoveryReportsUnreadableCatalogFiles(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	c.unreadable = []types.UnreadableEntry{{File: "garbage.json", Reason: "not a VM entry"}}
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(HostRecovery, HostRecoveryInput{Host: "hv1", Incident: "i1", Round: 1, Cause: "test"})
	var res types.RecoveryResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(res.Outcomes) != 1 || !res.Outcomes[0].Recovered || res.Complete() {
		t.Fatalf("result %+v: want web recovered and the round incomplete", res)
	}
	if !slices.Contains(c.eventKinds(), string(types.EventCatalogUnreadable)) {
		t.Fatalf("events %v: want catalog.unreadable", c.eventKinds())
	}
}

// Issue 6 item 2: when an attempt fails and its clean-up fails too, a copy may run there: no other host is tried,
// the claim stays in the catalog, and the next round removes that copy before anything else.
func TestRecoverVMDoesNotTryElsewhereWhenCleanUpFails(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("db", 5, "hv1")}
	c.failOn["commit@hv2"] = "share read-only"
	c.failOn["remove@hv2"] = "worker lost"
	recoverDB := func(round int) types.VMOutcome {
		env := newEnv(t, c, defaultPolicy)
		env.ExecuteWorkflow(RecoverVM, RecoverVMInput{FailedHost: "hv1", Incident: "i1", Round: round, VM: c.vms[0], Policy: defaultPolicy})
		var out types.VMOutcome
		if err := env.GetWorkflowResult(&out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	out := recoverDB(1)
	if got := c.callsWith("claim db@hv3"); len(got) != 0 || out.Recovered {
		t.Fatalf("tried hv3 while a copy may run on hv2: %v, outcome %+v", c.calls, out)
	}
	if vm := c.vms[0]; vm.Owner != "hv2" || vm.Phase != types.PhaseStarting || vm.ClaimedFrom != "hv1" {
		t.Fatalf("catalog %+v: want hv2's claim kept, so the next round sees it", vm)
	}

	// The next round: hv2's clean-up still fails, so db stays where it is.
	c.calls = nil
	if out = recoverDB(2); out.Recovered || len(c.callsWith("define")) != 0 {
		t.Fatalf("calls %v while the copy on hv2 could not be removed", c.calls)
	}
	// Once hv2 answers, its copy is removed and its claim released first, then the VM is recovered.
	delete(c.failOn, "remove@hv2")
	delete(c.failOn, "commit@hv2")
	c.calls = nil
	out = recoverDB(3)
	if got := c.callsWith(""); len(got) < 2 || got[0] != "remove db@hv2" || got[1] != "release db@hv2" || !out.Recovered {
		t.Fatalf("calls %v, outcome %+v: want the stale copy removed and released first, then the VM recovered", got, out)
	}
}

// Issue 6 item 7: a commit whose answer was lost landed after all; the compensation must not destroy the VM.
func TestRecoverVMKeepsAVMWhoseCommitLanded(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("db", 5, "hv1")}
	c.failOn["commit@hv2"] = "deadline exceeded"
	c.failOn["remove@hv2"] = "committed"
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(RecoverVM, RecoverVMInput{FailedHost: "hv1", Incident: "i1", Round: 1, VM: c.vms[0], Policy: defaultPolicy})
	var out types.VMOutcome
	if err := env.GetWorkflowResult(&out); err != nil {
		t.Fatal(err)
	}
	if !out.Recovered || out.Target != "hv2" || len(c.callsWith("claim db@hv3")) != 0 {
		t.Fatalf("outcome %+v, calls %v: a VM committed to hv2 is recovered there, not removed and tried elsewhere", out, c.calls)
	}
}

// `vmha hosts` counts each host's HA VMs and the ones down: those of a host confirmed off, and those a healthy
// host does not run.
func TestHAReportCountsVMsDownPerHost(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("a", 1, "hv1"), vm("b", 1, "hv1"), vm("c", 1, "hv2")}
	c.hosts[0].Stats.Running = []string{"uuid-a"}
	c.hosts[1].State = types.HostRecoveryFailed
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(HAReport)
	var got types.HAReport
	if err := env.GetWorkflowResult(&got); err != nil {
		t.Fatal(err)
	}
	want := []types.HostVMs{{Host: "hv1", VMs: 2, Down: 1}, {Host: "hv2", VMs: 1, Down: 1}, {Host: "hv3"}}
	if !slices.Equal(got.Hosts, want) {
		t.Fatalf("report %+v, want %+v", got.Hosts, want)
	}
}

// Issue 7: hung hosts, lost storage, BMCs that cannot be asked.

var (
	hungProbe        = types.Probe{Reach: types.ReachDown, Power: types.PowerOn, Heartbeat: types.HeartbeatStopped}
	isolatedAlive    = types.Probe{Reach: types.ReachDown, Power: types.PowerOn, Heartbeat: types.HeartbeatAlive}
	storageLostProbe = types.Probe{Reach: types.ReachUp, Power: types.PowerOn, WorkerAlive: true, Heartbeat: types.HeartbeatStopped}
	unknownStopped   = types.Probe{Reach: types.ReachDown, Power: types.PowerUnreachable, Heartbeat: types.HeartbeatStopped}
	selfFenced       = types.Probe{Reach: types.ReachDown, Power: types.PowerUnreachable, Heartbeat: types.HeartbeatSelfFenced,
		Watchdog: types.WatchdogState{Armed: true, Timeout: 10 * time.Second}}
)

func fencePolicy(hung, storageLost bool) types.Policy {
	p := defaultPolicy
	p.FenceHung, p.FenceStorageLost, p.UnknownReminder = hung, storageLost, time.Minute
	return p
}

// runMonitorWith is runMonitor with a policy and the fencing activities recorded as calls.
func runMonitorWith(t *testing.T, c *cluster, policy types.Policy, setUp func(env envWithCallbacks), probes ...types.Probe) {
	t.Helper()
	env := newEnv(t, c, policy)
	env.OnActivity(controller.PowerOff, mock.Anything, mock.Anything).Return(func(_ context.Context, spec types.HostSpec) error {
		c.record("power-off " + spec.Name)
		return nil
	})
	env.OnActivity(controller.WaitPowerOff, mock.Anything, mock.Anything).Return(func(_ context.Context, spec types.HostSpec) error {
		c.record("confirmed-off " + spec.Name)
		return nil
	})
	watchReturns(env, probes...)
	if setUp != nil {
		setUp(env)
	}
	retireAfter(env, time.Hour)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
}

func TestMonitorFencesAHungHostThenRecoversIt(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	runMonitorWith(t, c, fencePolicy(true, false), nil, healthyProbe, hungProbe)
	// The survivors' stats are asked alongside the listing: not part of the order checked here.
	calls := strings.Join(slices.DeleteFunc(c.callsWith(""), func(call string) bool { return strings.HasPrefix(call, "stats ") }), ",")
	if !strings.HasPrefix(calls, "power-off hv1,confirmed-off hv1,list hv1,claim web@hv2") || !strings.Contains(calls, "commit web@hv2") {
		t.Fatalf("calls %s: want the hung host fenced and confirmed off before its VM is claimed elsewhere", calls)
	}
	if chain := strings.Join(c.stateChain(), ","); chain != "healthy,hung,dead,recovering,recovered" {
		t.Fatalf("state chain %s", chain)
	}
}

func TestMonitorOnlyReportsAHungHostWhenFencingIsOff(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	runMonitorWith(t, c, fencePolicy(false, false), nil, healthyProbe, hungProbe)
	if got := c.callsWith(""); len(got) != 0 {
		t.Fatalf("calls %v: a hung host with fencing off must only be reported", got)
	}
	if chain := strings.Join(c.stateChain(), ","); chain != "healthy,hung" {
		t.Fatalf("state chain %s", chain)
	}
}

// An isolated host whose heartbeat is alive still writes its disks: never fenced, never recovered (the patent).
func TestMonitorNeverTouchesAnIsolatedHostWithALiveHeartbeat(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	runMonitorWith(t, c, fencePolicy(true, true), nil, healthyProbe, isolatedAlive, isolatedAlive, healthyProbe)
	if got := c.callsWith(""); len(got) != 0 {
		t.Fatalf("calls %v on an isolated host whose heartbeat is alive", got)
	}
}

func TestMonitorStorageLost(t *testing.T) {
	for _, fenceIt := range []bool{false, true} {
		t.Run(fmt.Sprint("fence ", fenceIt), func(t *testing.T) {
			c := newCluster("hv1", "hv2")
			c.vms = []types.VMRecord{vm("web", 1, "hv1")}
			runMonitorWith(t, c, fencePolicy(true, fenceIt), nil, healthyProbe, storageLostProbe)
			fenced := len(c.callsWith("power-off hv1")) == 1 && len(c.callsWith("commit web@hv2")) == 1
			if fenced != fenceIt || !slices.Contains(c.stateChain(), "storage-lost") {
				t.Fatalf("fence setting %t: calls %v, states %v", fenceIt, c.calls, c.stateChain())
			}
		})
	}
}

// A host nobody can tell is off: reminded until an operator confirms it, then recovered, naming who confirmed.
func TestMonitorUnknownHostIsRemindedUntilConfirmed(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	c.power["hv1"] = types.PowerUnreachable
	runMonitorWith(t, c, fencePolicy(true, false), func(env envWithCallbacks) {
		env.RegisterDelayedCallback(func() {
			if got := c.callsWith(""); len(got) != 0 {
				t.Errorf("calls %v before anyone confirmed the host off", got)
			}
			env.SignalWorkflow(activities.SignalFenced, activities.FenceNotice{By: "vmha-failover-hv1", Reason: "checked the PDU",
				ConfirmedOffBy: "alice@ops"})
		}, 10*time.Minute)
	}, healthyProbe, unknownStopped)
	reminders := 0
	var dead types.Event
	for _, e := range c.events {
		if e.Kind == types.EventHostAlert && strings.Contains(e.Reason, "--confirm-powered-off") {
			reminders++
		}
		if e.To == types.HostDead {
			dead = e
		}
	}
	if reminders < 5 {
		t.Fatalf("%d reminders in 9 minutes of unknown, want one a minute", reminders)
	}
	if !strings.Contains(dead.Reason, "confirmed powered off by alice@ops") || len(c.callsWith("commit web@hv2")) != 1 {
		t.Fatalf("dead because %q, calls %v: want recovered on alice's word", dead.Reason, c.calls)
	}
}

// An unknown host whose probes keep changing (heartbeat alive, then stopped, ...) is still reminded every
// UnknownReminder: a probe that leaves the state as it is does not re-arm the reminder (lab scenario i7_4).
func TestMonitorUnknownReminderNotPostponedByProbes(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.power["hv1"] = types.PowerUnreachable
	policy := fencePolicy(true, false)
	policy.UnknownReminder = 90 * time.Second
	unknownAlive := types.Probe{Reach: types.ReachDown, Power: types.PowerUnreachable, Heartbeat: types.HeartbeatAlive}
	probes := []types.Probe{healthyProbe}
	for i := 0; i < 70; i++ {
		probes = append(probes, unknownAlive, unknownStopped)
	}
	runMonitorWith(t, c, policy, nil, probes...)
	reminders := 0
	for _, e := range c.events {
		if e.Kind == types.EventHostAlert && strings.Contains(e.Reason, "still unknown") {
			reminders++
		}
	}
	// 59 minutes of unknown, a probe every minute, a reminder every 90 s.
	if reminders < 30 {
		t.Fatalf("%d reminders in an hour of unknown with a probe a minute, want one every 90 s", reminders)
	}
}

// A confirmation for a host that answers on the network is refused: only an unreachable host can be confirmed off.
func TestMonitorRefusesAConfirmationForAReachableHost(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	c.power["hv1"] = types.PowerUnreachable
	runMonitorWith(t, c, fencePolicy(true, false), func(env envWithCallbacks) {
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(activities.SignalFenced, activities.FenceNotice{By: "x", Reason: "sure", ConfirmedOffBy: "bob@ops"})
		}, 10*time.Minute)
	}, types.Probe{Reach: types.ReachUp, Power: types.PowerUnreachable, WorkerAlive: true})
	if got := c.callsWith(""); len(got) != 0 {
		t.Fatalf("calls %v after a confirmation for a reachable host", got)
	}
}

// A host whose armed watchdog's timeout has passed fenced itself: recovered without a person.
func TestMonitorRecoversAHostItsWatchdogFenced(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	runMonitorWith(t, c, fencePolicy(true, false), nil, healthyProbe, unknownStopped, selfFenced)
	if len(c.callsWith("commit web@hv2")) != 1 || len(c.callsWith("power-off")) != 0 {
		t.Fatalf("calls %v: want web recovered without a fence", c.calls)
	}
}

// A claim left by an attempt whose VM does run on its target (its worker came back) is committed there: recovered
// with no second start and no outage.
func TestRecoverVMCommitsAClaimedCopyThatRuns(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	db := vm("db", 5, "hv1")
	db.Owner, db.Generation, db.Phase, db.ClaimedFrom = "hv2", db.Generation+1, types.PhaseStarting, "hv1"
	c.vms = []types.VMRecord{db}
	c.runs["db@hv2"] = true
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(RecoverVM, RecoverVMInput{FailedHost: "hv1", Incident: "i1", Round: 2, VM: db, Policy: defaultPolicy})
	var out types.VMOutcome
	if err := env.GetWorkflowResult(&out); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.callsWith(""), ","); got != "commit db@hv2" || !out.Recovered || out.Target != "hv2" {
		t.Fatalf("calls %s, outcome %+v: want the running copy on hv2 committed and nothing else", got, out)
	}
	if c.vms[0].Phase != types.PhaseOwned || c.vms[0].Owner != "hv2" {
		t.Fatalf("catalog %+v", c.vms[0])
	}
}

// ResolveStrayCopy (issue 6): a stray copy is destroyed once the owner's copy is seen running, and only then (a copy
// the owner is still receiving by live migration is not running yet); when the owner answers that it does not run
// the VM, the stray is the only copy and its host adopts it; when the owner does not answer, people are told.
func TestResolveStrayCopy(t *testing.T) {
	for _, c := range []struct {
		owner string // what the owner hv2 says: running, migrating, not-found, or no answer
		want  string
	}{
		{"running", "destroy-stray db@hv1"},
		{"migrating", ""},
		{"not-found", "adopt db@hv1"},
		{"no answer", ""},
	} {
		t.Run(c.owner, func(t *testing.T) {
			cl := newCluster("hv1", "hv2")
			cl.vms = []types.VMRecord{vm("db", 1, "hv2")}
			cl.runs["db@hv1"] = true
			switch c.owner {
			case "running":
				cl.runs["db@hv2"] = true
			case "migrating":
				cl.failOn["state@hv2"] = string(types.DomainMigrating)
			case "no answer":
				cl.failOn["state@hv2"] = "no poller"
			}
			env := newEnv(t, cl, defaultPolicy)
			env.OnActivity(onHost.DestroyStray, mock.Anything, mock.Anything).Return(func(ctx context.Context, s types.StrayCopy) error {
				cl.record("destroy-stray " + s.VM + "@" + hostOf(ctx))
				return nil
			})
			env.OnActivity(onHost.AdoptStray, mock.Anything, mock.Anything).Return(func(ctx context.Context, s types.StrayCopy) error {
				cl.record("adopt " + s.VM + "@" + hostOf(ctx))
				return nil
			})
			env.ExecuteWorkflow(ResolveStrayCopy, types.StrayCopy{VM: "db", UUID: "uuid-db", Host: "hv1", Owner: "hv2", Generation: 3})
			if err := env.GetWorkflowError(); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(cl.callsWith(""), ","); got != c.want || !slices.Contains(cl.eventKinds(), string(types.EventHostAlert)) {
				t.Fatalf("owner %s: calls %q, want %q; events %v", c.owner, got, c.want, cl.eventKinds())
			}
		})
	}
}

// Issue 12: the monitor tells in the Web UI (its current details) what it sees and what it does about it.
func TestMonitorTellsWhatItSeesAndDoes(t *testing.T) {
	c := newCluster("hv1", "hv2")
	env := newEnv(t, c, fencePolicy(false, false))
	watchReturns(env, healthyProbe, hungProbe)
	var story string
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow("__temporal_workflow_metadata")
		if err != nil {
			t.Error(err)
			return
		}
		var md sdkpb.WorkflowMetadata
		if err := v.Get(&md); err != nil {
			t.Error(err)
			return
		}
		story = md.GetCurrentDetails()
	}, 5*time.Minute)
	retireAfter(env, time.Hour)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hv1 is hung since", "network down, BMC says power on, storage heartbeat stopped", "fences it"} {
		if !strings.Contains(story, want) {
			t.Fatalf("current details %q: want %q", story, want)
		}
	}
}

// A monitor continued as new while its host is unknown keeps reminding, though its watch has nothing new to say.
func TestMonitorKeepsRemindingAfterContinueAsNew(t *testing.T) {
	c := newCluster("hv1", "hv2")
	env := newEnv(t, c, fencePolicy(true, false))
	env.OnActivity(controller.WatchHost, mock.Anything, mock.Anything).Return(unknownStopped, nil).After(2 * time.Hour)
	retireAfter(env, 30*time.Minute)
	in := monitorInput("hv1")
	in.State, in.Last = types.HostUnknown, unknownStopped
	env.ExecuteWorkflow(HostMonitor, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if n := len(c.callsWith("")) + strings.Count(strings.Join(c.eventKinds(), ","), string(types.EventHostAlert)); n < 20 {
		t.Fatalf("%d reminders in 30 minutes at one a minute", n)
	}
}
