package lab_test

// Issue 7's scenarios: a hung host, a host that lost the share, a power loss that took the BMC along, and the
// hardware watchdog (the lab's, infra/lab/watchdog).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"

	"vmha/activities"
	"vmha/types"
)

// labWatchdogTimeout is what the watchdog scenario arms: vmha recovers a self-fenced host this long plus
// VMHA_HEARTBEAT_STOPPED_AFTER (2 s) after the last heartbeat change it saw.
const labWatchdogTimeout = 4 * time.Second

func (w *world) monitorStatus(t *testing.T, host string) activities.MonitorInput {
	v, err := w.client.QueryWorkflow(context.Background(), types.HostMonitorID(host), "", activities.QueryStatus)
	if err != nil {
		t.Fatalf("query %s: %v", types.HostMonitorID(host), err)
	}
	var st activities.MonitorInput
	if err := v.Get(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// heartbeatOf reads the host's storage heartbeat from the share, as the controller does.
func (w *world) heartbeatOf(host string) (types.Heartbeat, error) {
	var hb types.Heartbeat
	b, err := os.ReadFile(filepath.Join(w.lab.Dir, "share", "vmha", "heartbeats", host+".json"))
	if err != nil {
		return hb, err
	}
	return hb, json.Unmarshal(b, &hb)
}

// qemuCopies counts the QEMU processes of a VM on the whole machine (every lab host shares this kernel), frozen
// ones included: the copy watcher cannot ask a hung host's frozen libvirtd, /proc still sees its QEMU.
func qemuCopies(uuid string) int {
	n := 0
	for _, pid := range processesWith(uuid) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(b), "-uuid\x00"+uuid) {
			n++
		}
	}
	return n
}

// noQemuTwice fails the test when a VM has two QEMU processes anywhere.
func noQemuTwice(t *testing.T, uuids map[string]string) {
	t.Helper()
	for vm, u := range uuids {
		if n := qemuCopies(u); n > 1 {
			t.Fatalf("%s has %d QEMU processes on this machine", vm, n)
		}
	}
}

func (w *world) uuidsOf(t *testing.T, host string, vms []string) map[string]string {
	uuids := map[string]string{}
	for _, vm := range vms {
		uuids[vm] = w.uuidOf(t, host, vm)
	}
	return uuids
}

func (w *world) recoveryCounts(t *testing.T, uuids map[string]string) map[string]int {
	n := map[string]int{}
	for vm, u := range uuids {
		n[vm] = len(w.recoveriesOfVM(t, u))
	}
	return n
}

func (w *world) checkOneMoreRecovery(t *testing.T, uuids map[string]string, before map[string]int) {
	for vm, u := range uuids {
		if n := len(w.recoveriesOfVM(t, u)); n != before[vm]+1 {
			t.Fatalf("%s: want exactly one more RecoverVM, got %d", vm, n-before[vm])
		}
	}
}

// stateEvent is the first host.state event to one of the states after since.
func (h *webhook) stateEvent(host string, since time.Time, to types.HostState) (types.Event, bool) {
	evs := h.find(types.EventHostState, since, func(e types.Event) bool { return e.Host == host && e.To == to })
	if len(evs) == 0 {
		return types.Event{}, false
	}
	sort.Slice(evs, func(i, j int) bool { return evs[i].At.Before(evs[j].At) })
	return evs[0], true
}

// hangTiming splits a hang's recovery: detection (freeze -> first failed probe), verdict (-> hung: the storage
// heartbeat stopped), fence (-> dead: vmha powered it off and the BMC confirmed), restart (-> running elsewhere,
// as virsh sees it); confirmed is when vmha saw the VMs running (vm.recovery.done).
type hangTiming struct{ detection, verdict, fence, restart, total, confirmed time.Duration }

// timedHang hangs host x (which runs vms) and waits until every VM runs elsewhere, exactly once, checking /proc all
// along that no VM ever has two QEMU processes (the frozen one counts).
func (w *world) timedHang(t *testing.T, x string, vms []string) hangTiming {
	uuids := w.uuidsOf(t, x, vms)
	frozen, err := w.lab.Hang(context.Background(), x)
	if err != nil {
		t.Fatal(err)
	}
	var at map[string]string
	w.eventually(t, 60*time.Second, fmt.Sprintf("%v running off hung %s", vms, x), func() error {
		noQemuTwice(t, uuids)
		at = w.running(t)
		for _, vm := range vms {
			if h, ok := at[vm]; !ok || h == x {
				return fmt.Errorf("%s runs on %q", vm, h)
			}
		}
		return nil
	})
	running := time.Now()
	suspect := w.hooks.firstState(x, frozen, types.HostSuspect, types.HostIsolated, types.HostUnknown, types.HostHung, types.HostDead)
	hung, ok := w.stateEventWithin(x, frozen, types.HostHung)
	if !ok {
		t.Fatalf("%s never reported hung", x)
	}
	dead, ok := w.stateEventWithin(x, frozen, types.HostDead)
	if !ok {
		t.Fatalf("%s never reported dead", x)
	}
	if !strings.Contains(dead.Reason, "fenced by vmha") && !strings.Contains(dead.Reason, "power off") {
		t.Fatalf("%s dead, but not fenced: %s", x, dead.Reason)
	}
	var confirmed time.Time
	w.eventually(t, 10*time.Second, "vm.recovery.done events", func() error {
		for _, vm := range vms {
			c := w.hooks.first(types.EventRecoveryDone, vm, frozen)
			if c.IsZero() {
				return fmt.Errorf("none for %s", vm)
			}
			if c.After(confirmed) {
				confirmed = c
			}
		}
		return nil
	})
	t.Logf("hang of %s -> hung %.2fs -> dead %.2fs (%s) -> %v running elsewhere %.2fs", x, hung.At.Sub(frozen).Seconds(),
		dead.At.Sub(frozen).Seconds(), dead.Reason, at, running.Sub(frozen).Seconds())
	return hangTiming{detection: suspect.Sub(frozen), verdict: hung.At.Sub(suspect), fence: dead.At.Sub(hung.At),
		restart: running.Sub(dead.At), total: running.Sub(frozen), confirmed: confirmed.Sub(frozen)}
}

// i7 1. A host hangs whole (every process stopped, link down, BMC says on): its heartbeat stops, vmha fences it
// through IPMI (the BMC confirms off), and its VMs run elsewhere once. The hung host was really powered off: thawed
// afterwards, nothing of it runs, and each VM has exactly one QEMU on the machine.
func (w *world) hangFenced(t *testing.T) {
	x := w.byLoad(t)[0]
	xVMs := vmsOn(w.running(t), x)
	uuids := w.uuidsOf(t, x, xVMs)
	before := w.recoveryCounts(t, uuids)
	t.Logf("hanging %s, which runs %v", x, xVMs)
	tm := w.timedHang(t, x, xVMs)
	w.waitState(t, 20*time.Second, x, types.HostRecovered)
	w.checkOneMoreRecovery(t, uuids, before)
	if w.lab.PoweredOn(x) {
		t.Fatalf("%s is still powered after vmha fenced it", x)
	}
	if err := w.lab.Thaw(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	w.hold(t, 3*time.Second, "after the thaw, nothing of "+x+" runs and each VM runs once", func() error {
		if w.lab.PoweredOn(x) {
			return fmt.Errorf("%s powered", x)
		}
		at := w.running(t)
		for vm, u := range uuids {
			if at[vm] == "" || at[vm] == x {
				return fmt.Errorf("%s runs on %q", vm, at[vm])
			}
			if n := qemuCopies(u); n != 1 {
				return fmt.Errorf("%s has %d QEMU processes", vm, n)
			}
		}
		return nil
	})
	t.Logf("scenario i7_1: hang to running elsewhere %.2fs (detection %.2fs, heartbeat verdict %.2fs, fence confirmed %.2fs, restart %.2fs)",
		tm.total.Seconds(), tm.detection.Seconds(), tm.verdict.Seconds(), tm.fence.Seconds(), tm.restart.Seconds())
	w.powerOnAll(t)
	w.hold(t, 3*time.Second, "the old host starts nothing", func() error {
		at := w.running(t)
		for _, vm := range xVMs {
			if at[vm] == x {
				return fmt.Errorf("%s runs on %s again", vm, x)
			}
		}
		return nil
	})
}

// i7 3. A host loses the share while its network works: storage-lost, an alert, nothing moves. With
// VMHA_FENCE_STORAGE_LOST=true on the controller, the same fault fences the host and recovers its VMs.
func (w *world) storageLost(t *testing.T) {
	y := w.byLoad(t)[0]
	yVMs := vmsOn(w.running(t), y)
	uuids := w.uuidsOf(t, y, yVMs)
	before := w.recoveryCounts(t, uuids)
	since := time.Now()
	if err := w.lab.StorageCut(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = w.lab.StorageRestore(context.Background(), y)
		}
	}()
	w.waitState(t, 20*time.Second, y, types.HostStorageLost)
	lost, ok := w.stateEventWithin(y, since, types.HostStorageLost)
	if !ok {
		t.Fatalf("no storage-lost event for %s reached the webhook", y)
	}
	t.Logf("%s storage-lost %.2fs after the cut: %s", y, lost.At.Sub(since).Seconds(), lost.Reason)
	w.hold(t, 10*time.Second, "default setting: nothing moves", func() error {
		at := w.running(t)
		for _, vm := range yVMs {
			if at[vm] != y {
				return fmt.Errorf("%s on %q", vm, at[vm])
			}
		}
		if s := w.hostState(y); s != types.HostStorageLost {
			return fmt.Errorf("%s is %s", y, s)
		}
		return nil
	})
	if ids := w.hostRecoveries(t, y, since); len(ids) != 0 {
		t.Fatalf("recovery of %s with VMHA_FENCE_STORAGE_LOST off: %v", y, ids)
	}
	if err := w.lab.StorageRestore(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	restored = true
	w.waitHealthy(t, y)

	t.Logf("controller restarted with VMHA_FENCE_STORAGE_LOST=true")
	w.restartController(t, "VMHA_FENCE_STORAGE_LOST=true")
	defer w.restartController(t)
	since = time.Now()
	if err := w.lab.StorageCut(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	at := w.waitRunningOff(t, 90*time.Second, yVMs, y)
	dead, ok := w.stateEventWithin(y, since, types.HostDead)
	if !ok || !strings.Contains(dead.Reason, "fenced by vmha") {
		t.Fatalf("%s: dead event %+v (found %t), want fenced by vmha", y, dead, ok)
	}
	t.Logf("VMHA_FENCE_STORAGE_LOST=true: %s dead %.2fs after the cut (%s); VMs %v", y, dead.At.Sub(since).Seconds(), dead.Reason, at)
	w.waitState(t, 20*time.Second, y, types.HostRecovered)
	w.checkOneMoreRecovery(t, uuids, before)
	if w.lab.PoweredOn(y) {
		t.Fatalf("%s still powered after it was fenced", y)
	}
	restored = true // the power-off took the hidden share with it
	w.powerOnAll(t)
}

// i7 4. The host and its BMC lose power together: unknown, an alert at once and again every VMHA_UNKNOWN_REMINDER
// (5 s here), nothing moves, also past a watchdog's timeout + 2 s (the heartbeat says no watchdog was armed: this is
// the watchdog scenario's "never without a guarantee"). `vmha failover --confirm-powered-off` recovers it, and who
// confirmed and why is in the history.
func (w *world) bmcDeadWithHost(t *testing.T) {
	x := w.byLoad(t)[0]
	xVMs := vmsOn(w.running(t), x)
	uuids := w.uuidsOf(t, x, xVMs)
	before := w.recoveryCounts(t, uuids)
	since := time.Now()
	if err := w.lab.PullPlug(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.lab.BMCOn(context.Background(), x) }()
	w.waitState(t, 20*time.Second, x, types.HostUnknown)
	if hb, err := w.heartbeatOf(x); err != nil || hb.Watchdog.Armed {
		t.Fatalf("%s's last heartbeat %+v (%v): want no watchdog armed", x, hb, err)
	}
	reminders := func() []types.Event {
		return w.hooks.find(types.EventHostAlert, since, func(e types.Event) bool {
			return e.Host == x && strings.Contains(e.Reason, "still unknown")
		})
	}
	hold := max(labWatchdogTimeout+2*time.Second+3*time.Second, 11*time.Second)
	w.hold(t, hold, x+" unknown, its VMs nowhere", func() error {
		if s := w.hostState(x); s != types.HostUnknown {
			return fmt.Errorf("%s is %s", x, s)
		}
		at := w.running(t)
		for _, vm := range xVMs {
			if h, ok := at[vm]; ok {
				return fmt.Errorf("%s runs on %s", vm, h)
			}
		}
		return nil
	})
	if ids := w.hostRecoveries(t, x, since); len(ids) != 0 {
		t.Fatalf("recovery of %s, whose power nobody can tell: %v", x, ids)
	}
	if n := len(reminders()); n < 2 {
		t.Fatalf("%d reminders about unknown %s in %s, want >= 2 (VMHA_UNKNOWN_REMINDER=5s)", n, x, hold)
	}
	t.Logf("%s unknown for %.1fs: %d reminders, first: %s", x, time.Since(since).Seconds(), len(reminders()), reminders()[0].Reason)

	reason := "lab scenario i7_4: PDU outlet checked, off"
	confirmedAt := time.Now()
	t.Logf("vmha failover: %s", strings.TrimSpace(w.vmha(t, "failover", "--host", x, "--confirm-powered-off", "--reason", reason)))
	at := w.waitRunningOff(t, 60*time.Second, xVMs, x)
	t.Logf("confirmed -> %v running elsewhere in %.2fs", at, time.Since(confirmedAt).Seconds())
	w.waitState(t, 20*time.Second, x, types.HostRecovered)
	w.checkOneMoreRecovery(t, uuids, before)
	dead, ok := w.stateEventWithin(x, since, types.HostDead)
	if !ok || !strings.Contains(dead.Reason, "confirmed powered off by") || !strings.Contains(dead.Reason, reason) {
		t.Fatalf("dead event %+v (found %t): want who confirmed and why", dead, ok)
	}
	// The history: the ManualFailover's input names who and why.
	iter := w.client.GetWorkflowHistory(context.Background(), types.ManualFailoverID(x), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	ev, err := iter.Next()
	if err != nil {
		t.Fatal(err)
	}
	var req types.FailoverRequest
	if p := ev.GetWorkflowExecutionStartedEventAttributes().GetInput().GetPayloads(); len(p) != 1 || json.Unmarshal(p[0].GetData(), &req) != nil {
		t.Fatalf("failover history starts with %v", ev)
	}
	if !req.ConfirmPoweredOff || req.Reason != reason || req.By == "" {
		t.Fatalf("failover input %+v: want the confirmation, the reason and who", req)
	}
	t.Logf("history: %s confirmed by %q: %q; monitor: %s", types.ManualFailoverID(x), req.By, req.Reason, dead.Reason)
	if err := w.lab.BMCOn(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	w.powerOnAll(t)
}

// armWatchdog makes host's worker arm the lab watchdog and waits until its heartbeat says so.
func (w *world) armWatchdog(t *testing.T, host string) {
	if err := w.lab.Watchdog(context.Background(), host, true, labWatchdogTimeout); err != nil {
		t.Fatal(err)
	}
	if err := w.lab.KillWorker(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	w.eventually(t, 20*time.Second, host+"'s heartbeat announcing an armed watchdog", func() error {
		hb, err := w.heartbeatOf(host)
		if err != nil {
			return err
		}
		if !hb.Watchdog.Armed || hb.Watchdog.Timeout != labWatchdogTimeout {
			return fmt.Errorf("watchdog %+v", hb.Watchdog)
		}
		return nil
	})
	w.waitHealthy(t, host)
}

func (w *world) watchdogLog(host string) string {
	b, _ := os.ReadFile(filepath.Join(w.lab.Dir, host, "watchdog.log"))
	return string(b)
}

// i7 5. The watchdog armed. (a) A hang with the BMC alive: the host is off within the watchdog's timeout, whoever
// acts first (vmha's fence or the watchdog), and its VMs are recovered once. (b) A power loss that takes the BMC
// along: the recovery starts by itself once the heartbeat has been stopped for the watchdog's timeout + 2 s, never
// before. (Without an armed watchdog the same fault stays unknown: scenario i7_4.)
func (w *world) watchdogScenario(t *testing.T) {
	x := w.byLoad(t)[0]
	defer func() { _ = w.lab.Watchdog(context.Background(), x, false, 0) }()
	w.armWatchdog(t, x)
	xVMs := vmsOn(w.running(t), x)
	uuids := w.uuidsOf(t, x, xVMs)
	before := w.recoveryCounts(t, uuids)
	expiredBefore := strings.Count(w.watchdogLog(x), "EXPIRED")
	frozen, err := w.lab.Hang(context.Background(), x)
	if err != nil {
		t.Fatal(err)
	}
	var off time.Time
	w.eventually(t, labWatchdogTimeout+5*time.Second, x+" powered off", func() error {
		noQemuTwice(t, uuids)
		if w.lab.PoweredOn(x) {
			return fmt.Errorf("still on")
		}
		off = time.Now()
		return nil
	})
	who := "vmha's fence"
	if strings.Count(w.watchdogLog(x), "EXPIRED") > expiredBefore {
		who = "the watchdog"
	}
	t.Logf("(a) hung %s off %.2fs after the freeze, by %s (watchdog timeout %s)", x, off.Sub(frozen).Seconds(), who, labWatchdogTimeout)
	// The last pet was before the freeze; the check runs every 100 ms.
	if off.Sub(frozen) > labWatchdogTimeout+time.Second {
		t.Fatalf("%s off %.2fs after the freeze: beyond the watchdog's %s", x, off.Sub(frozen).Seconds(), labWatchdogTimeout)
	}
	at := w.waitRunningOff(t, 60*time.Second, xVMs, x)
	w.waitState(t, 20*time.Second, x, types.HostRecovered)
	w.checkOneMoreRecovery(t, uuids, before)
	t.Logf("(a) %v running elsewhere %.2fs after the freeze", at, time.Since(frozen).Seconds())
	if err := w.lab.Watchdog(context.Background(), x, false, 0); err != nil {
		t.Fatal(err)
	}
	w.powerOnAll(t)

	// (b) Another host with VMs, armed, loses its power and its BMC together.
	y := w.byLoad(t)[0]
	defer func() { _ = w.lab.Watchdog(context.Background(), y, false, 0) }()
	w.armWatchdog(t, y)
	yVMs := vmsOn(w.running(t), y)
	uuids = w.uuidsOf(t, y, yVMs)
	before = w.recoveryCounts(t, uuids)
	pulled := time.Now()
	if err := w.lab.PullPlug(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.lab.BMCOn(context.Background(), y) }()
	guarantee := labWatchdogTimeout + 2*time.Second
	at = w.waitRunningOff(t, guarantee+30*time.Second, yVMs, y)
	running := time.Now()
	dead, ok := w.stateEventWithin(y, pulled, types.HostDead)
	if !ok {
		t.Fatalf("no dead event for %s", y)
	}
	if !strings.Contains(dead.Reason, "fenced itself") {
		t.Fatalf("%s dead, but not self-fenced: %s", y, dead.Reason)
	}
	if d := dead.At.Sub(pulled); d < guarantee {
		t.Fatalf("%s declared dead %.2fs after the power loss, before the guarantee's %s", y, d.Seconds(), guarantee)
	}
	if _, ok := w.stateEventWithin(y, pulled, types.HostUnknown); !ok {
		t.Fatalf("%s was never unknown before the guarantee's timeout", y)
	}
	w.waitState(t, 20*time.Second, y, types.HostRecovered)
	w.checkOneMoreRecovery(t, uuids, before)
	t.Logf("(b) power loss with the BMC of %s: dead %.2fs later (guarantee %s): %s; %v running elsewhere %.2fs after the power loss",
		y, dead.At.Sub(pulled).Seconds(), guarantee, dead.Reason, at, running.Sub(pulled).Seconds())
	if err := w.lab.Watchdog(context.Background(), y, false, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.lab.BMCOn(context.Background(), y); err != nil {
		t.Fatal(err)
	}
	w.powerOnAll(t)
}

func printHangTable(samples []hangTiming) {
	col := func(f func(hangTiming) time.Duration) (float64, float64, float64) {
		v := make([]time.Duration, len(samples))
		for i, s := range samples {
			v[i] = f(s)
		}
		return spread(v)
	}
	fmt.Printf("\nvmha lab: the VM's host hangs (every process stopped, link down, BMC on) -> VM running elsewhere (%d runs)\n\n", len(samples))
	fmt.Println("| phase | min s | median s | max s |")
	fmt.Println("|---|---|---|---|")
	for _, row := range []struct {
		name string
		f    func(hangTiming) time.Duration
	}{
		{"detection (freeze -> first failed probe)", func(s hangTiming) time.Duration { return s.detection }},
		{"heartbeat verdict (-> hung)", func(s hangTiming) time.Duration { return s.verdict }},
		{"fence confirmed (-> dead: IPMI power off, BMC confirms off)", func(s hangTiming) time.Duration { return s.fence }},
		{"restart (-> running elsewhere, seen by virsh)", func(s hangTiming) time.Duration { return s.restart }},
		{"total: freeze -> running elsewhere, seen by virsh", func(s hangTiming) time.Duration { return s.total }},
		{"freeze -> vmha confirmed it running (vm.recovery.done)", func(s hangTiming) time.Duration { return s.confirmed }},
	} {
		lo, med, hi := col(row.f)
		fmt.Printf("| %s | %.2f | %.2f | %.2f |\n", row.name, lo, med, hi)
	}
}

// stateEventWithin waits up to 10 s for the host's first state event into to since since: notifications are
// delivered after the state is visible, and may arrive a moment later.
func (w *world) stateEventWithin(host string, since time.Time, to types.HostState) (types.Event, bool) {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if e, ok := w.hooks.stateEvent(host, since, to); ok || time.Now().After(deadline) {
			return e, ok
		}
	}
}
