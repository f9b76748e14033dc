package starter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"

	"vmha/infra/monitoring"
	"vmha/types"
)

var statusNow = time.Date(2026, 11, 29, 17, 0, 0, 0, time.UTC)

func healthyHost(name string) StatusHost {
	return StatusHost{
		HostRow: HostRow{Name: name, State: types.HostHealthy, Since: statusNow.Add(-time.Hour), Address: "10.0.0.1"},
		Probe: types.Probe{Reach: types.ReachUp, Power: types.PowerOn, WorkerAlive: true, Heartbeat: types.HeartbeatAlive,
			At: statusNow.Add(-time.Second)},
		VMs: 2, Down: 0,
	}
}

func utc(t *testing.T) {
	t.Helper()
	old := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = old })
}

func TestStatusAllWell(t *testing.T) {
	utc(t)
	st := ClusterStatus{At: statusNow, Hosts: []StatusHost{healthyHost("hv1"), healthyHost("hv2")},
		Recoveries: []RecoveryRow{{WorkflowID: "vmha-recover-vm-x", Type: types.RecoverVMWorkflow, Host: "hv3",
			Status: "completed", Started: statusNow.Add(-10 * time.Minute), Seconds: 1.94, Summary: "demo -> hv1"}}}
	if got := StatusCode(st); got != StatusAllWell {
		t.Fatalf("StatusCode = %d, want %d (attention: %q)", got, StatusAllWell, Attention(st))
	}
	var b bytes.Buffer
	if err := RenderStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	want := `vmha status at 2026-11-29 17:00:00: all well. 2 hosts, 4 HA VMs, 0 down.

HOST  STATE    SINCE                             HA VMS  DOWN  WHY
hv1   healthy  2026-11-29 16:00:00 (1h0m0s ago)  2       0     last probe: network up, power on, worker polls, storage heartbeat alive
hv2   healthy  2026-11-29 16:00:00 (1h0m0s ago)  2       0     last probe: network up, power on, worker polls, storage heartbeat alive

RECENT RECOVERIES (newest first; vmha recoveries shows more)
STARTED              HOST  TYPE       TOOK   OUTCOME
2026-11-29 16:50:00  hv3   RecoverVM  1.9 s  demo -> hv1

Nothing needs a person.
`
	if b.String() != want {
		t.Errorf("status rendered\n%s\nwant\n%s", b.String(), want)
	}
}

func TestStatusNeedsPerson(t *testing.T) {
	utc(t)
	with := func(h StatusHost, f func(*StatusHost)) StatusHost { f(&h); return h }
	hosts := []StatusHost{
		with(healthyHost("hv1"), func(h *StatusHost) { h.Reason = "hv1 answers, power on, worker polls: healthy\nmore" }),
		with(healthyHost("hv2"), func(h *StatusHost) {
			h.State, h.Since, h.VMs, h.Down = types.HostRecoveryFailed, statusNow.Add(-2*time.Minute), 3, 1
			h.Cause, h.Incident, h.Round = "unreachable, BMC says off twice", "20261129T165800.000Z", 4
			h.Probe = types.Probe{Reach: types.ReachDown, Power: types.PowerOff, At: statusNow}
		}),
		with(healthyHost("hv3"), func(h *StatusHost) { h.State, h.Down = types.HostIsolated, -1 }),
		with(healthyHost("hv4"), func(h *StatusHost) { h.State, h.Since = types.HostSuspect, statusNow.Add(-10*time.Minute) }),
		with(healthyHost("hv5"), func(h *StatusHost) { h.State, h.Since = types.HostSuspect, statusNow.Add(-time.Minute) }),
		with(healthyHost("hv6"), func(h *StatusHost) { h.State, h.Down = types.HostUnknown, -1 }),
		with(healthyHost("hv7"), func(h *StatusHost) { h.State, h.Down = types.HostHung, -1 }),
		with(healthyHost("hv8"), func(h *StatusHost) {
			h.State, h.Reason = types.HostStorageLost, "heartbeat stopped for 2s while it answers"
		}),
		with(healthyHost("hv9"), func(h *StatusHost) { h.QueryError = "context deadline exceeded" }),
		with(healthyHost("hv10"), func(h *StatusHost) { h.Down = 1 }),
		with(healthyHost("hv11"), func(h *StatusHost) { h.State, h.Maintenance = types.HostMaintenance, true }),
	}
	st := ClusterStatus{At: statusNow, Hosts: hosts, Unreadable: 2, RecoveriesError: "list workflows: unavailable"}
	if got := StatusCode(st); got != StatusNeedsPerson {
		t.Fatalf("StatusCode = %d, want %d", got, StatusNeedsPerson)
	}
	var b bytes.Buffer
	if err := RenderStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"things need a person (below)",
		"hv1   healthy",
		"hv1 answers, power on, worker polls: healthy\n", // the monitor's reason, first line only
		"declared dead: unreachable, BMC says off twice (incident 20261129T165800.000Z, round 4); last probe: network down, power off, worker gone",
		"heartbeat stopped for 2s while it answers",
		"? the monitor did not answer: context deadline exceeded",
		"could not be listed: list workflows: unavailable",
		"host hv2 is recovery-failed since",
		"1 of the 3 HA VMs of host hv2 run nowhere",
		"host hv3 is isolated since", "vmha failover --host hv3 --fence",
		"host hv4 is suspect since 2026-11-29 16:50:00 (10m0s ago), more than 5m0s: is its vmha hypervisor worker running? (last probe: network up,",
		"host hv6 is unknown since", "--confirm-powered-off",
		"host hv7 is hung since",
		"host hv8 lost the shared storage",
		"the monitors of hv9 did not answer",
		"1 of the 2 HA VMs of host hv10 are down",
		"2 catalog files could not be read",
		"NEEDS A PERSON",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	for _, unwanted := range []string{"hv5 is suspect", "hv1 is", "hv11 is", "healthy\nmore", "Nothing needs a person"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("status says %q:\n%s", unwanted, out)
		}
	}
	if n := len(Attention(st)); n != 10 {
		t.Errorf("Attention has %d items, want 10: %q", n, Attention(st))
	}
}

func TestStatusCodeEachCause(t *testing.T) {
	base := func() ClusterStatus { return ClusterStatus{At: statusNow, Hosts: []StatusHost{healthyHost("hv1")}} }
	cases := map[string]func(*ClusterStatus){
		"no host monitored":  func(s *ClusterStatus) { s.Hosts = nil },
		"counts unknown":     func(s *ClusterStatus) { s.CountsError = "no worker answered" },
		"unreadable catalog": func(s *ClusterStatus) { s.Unreadable = 1 },
		"a VM down":          func(s *ClusterStatus) { s.Hosts[0].Down = 1 },
		"monitor silent":     func(s *ClusterStatus) { s.Hosts[0].QueryError = "timeout" },
		"monitor stuck":      func(s *ClusterStatus) { s.Hosts[0].Stuck = &StuckTask{Attempt: StuckAttempts, Since: statusNow} },
	}
	for _, st := range []types.HostState{types.HostIsolated, types.HostUnknown, types.HostHung, types.HostStorageLost, types.HostRecoveryFailed} {
		cases["host "+string(st)] = func(s *ClusterStatus) { s.Hosts[0].State = st }
	}
	for name, f := range cases {
		st := base()
		f(&st)
		if got := StatusCode(st); got != StatusNeedsPerson {
			t.Errorf("%s: StatusCode = %d, want %d", name, got, StatusNeedsPerson)
		}
	}
	// What vmha handles by itself is no reason to call anyone.
	for _, st := range []types.HostState{types.HostHealthy, types.HostSuspect, types.HostDead, types.HostRecovering,
		types.HostRecovered, types.HostMaintenance} {
		s := base()
		s.Hosts[0].State, s.Hosts[0].Since = st, statusNow.Add(-time.Minute)
		if got := StatusCode(s); got != StatusAllWell {
			t.Errorf("host %s for a minute: StatusCode = %d, want %d (%q)", st, got, StatusAllWell, Attention(s))
		}
	}
	s := base()
	s.Hosts[0].Down, s.Hosts[0].VMs = -1, -1
	if got := StatusCode(s); got != StatusAllWell {
		t.Errorf("counts unknown for one host: StatusCode = %d, want %d", got, StatusAllWell)
	}
}

func TestDescribeProbe(t *testing.T) {
	for _, c := range []struct {
		p    types.Probe
		want string
	}{
		{types.Probe{}, "none yet"},
		{types.Probe{Reach: types.ReachDown, Power: types.PowerUnreachable, At: statusNow, Detail: "dial: refused\nmore"},
			"network down, BMC unreachable, worker gone (dial: refused)"},
		{types.Probe{Reach: types.ReachFailing, Power: types.PowerAuthFailed, Heartbeat: types.HeartbeatStopped, At: statusNow},
			"network failing, BMC refused the credentials, worker gone, storage heartbeat stopped"},
		{types.Probe{Reach: types.ReachUp, WorkerAlive: true, At: statusNow}, "network up, power not confirmed, worker polls"},
	} {
		if got := DescribeProbe(c.p); got != c.want {
			t.Errorf("DescribeProbe(%+v) = %q, want %q", c.p, got, c.want)
		}
	}
}

func TestStatusMonitorQueryCannotReplay(t *testing.T) {
	utc(t)
	h := healthyHost("hv1")
	h.QueryError = "[TMPRL1100] lookup failed for scheduledEventID to activityID: scheduleEventID: 9, activityID: 9\nmore"
	st := ClusterStatus{At: statusNow, Hosts: []StatusHost{h, healthyHost("hv2")}}
	a := Attention(st)
	want := "the monitor of host hv1 cannot be replayed by the controllers' workflow code ([TMPRL1100] lookup failed for " +
		"scheduledEventID to activityID: scheduleEventID: 9, activityID: 9): it stalls at its next workflow task, and from then on " +
		"NOTHING WATCHES hv1. Roll back the upgrade"
	if len(a) != 1 || !strings.HasPrefix(a[0], want) {
		t.Errorf("Attention = %q, want one item starting %q", a, want)
	}
	if got := StatusCode(st); got != StatusNeedsPerson {
		t.Errorf("StatusCode = %d, want %d", got, StatusNeedsPerson)
	}
}

func TestStatusStuckMonitor(t *testing.T) {
	utc(t)
	since := statusNow.Add(-20 * time.Minute)
	for _, c := range []struct {
		task StuckTask
		want string
	}{
		{StuckTask{Attempt: 7, Since: since, Cause: enumspb.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR,
			Message: "[TMPRL1100] nondeterministic workflow: history event is ActivityTaskScheduled: WatchHost\nstack..."},
			"workflow code cannot replay this monitor's history ([TMPRL1100] nondeterministic workflow: history event is ActivityTaskScheduled: WatchHost)"},
		{StuckTask{Attempt: 3, Since: since, Cause: enumspb.WORKFLOW_TASK_FAILED_CAUSE_WORKFLOW_WORKER_UNHANDLED_FAILURE,
			Message: "panic: nil map"}, "its workflow task fails: WorkflowWorkerUnhandledFailure (panic: nil map)"},
		{StuckTask{Attempt: 4, Since: since}, "its workflow task times out on every attempt"},
		{StuckTask{Attempt: 4, Since: since, Message: "its history could not be read: unavailable"},
			"its workflow task keeps failing (its history could not be read: unavailable)"},
	} {
		h := healthyHost("hv1")
		h.Stuck = &c.task
		st := ClusterStatus{At: statusNow, Hosts: []StatusHost{h, healthyHost("hv2")}}
		if got := StatusCode(st); got != StatusNeedsPerson {
			t.Errorf("%+v: StatusCode = %d, want %d", c.task, got, StatusNeedsPerson)
		}
		var b bytes.Buffer
		if err := RenderStatus(&b, st); err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for _, want := range []string{
			fmt.Sprintf("? the monitor is stuck (workflow task attempt %d): nothing watches this host", c.task.Attempt),
			"NEEDS A PERSON\n  - the monitor of host hv1 is stuck since 2026-11-29 16:40:00, workflow task attempt " + fmt.Sprint(c.task.Attempt),
			c.want,
			"so NOTHING WATCHES hv1. Roll back the upgrade",
			"workflow.GetVersion",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		if n := len(Attention(st)); n != 1 {
			t.Errorf("Attention has %d items, want 1: %q", n, Attention(st))
		}
	}
}

// TestStatusFindsAMonitorThatCannotReplay is the upgrade that goes wrong, on a real Temporal server: a monitor runs
// under one build of the workflow code, a build that schedules something else first takes over, and its worker
// cannot replay the history. `vmha check-replay` of the new build must find it beforehand, vmha status must name
// the monitor under NEEDS A PERSON, and the SDK metric the VmhaWorkflowCannotReplay alert reads must count the
// failures, under the name and labels the rule uses.
func TestStatusFindsAMonitorThatCannotReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Temporal server")
	}
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	defer ts.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const queue = "vmha-controller"
	logger := slog.New(slog.DiscardHandler)

	monitor := func(first string) func(workflow.Context) error {
		return func(ctx workflow.Context) error {
			ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second})
			if err := workflow.ExecuteActivity(ctx, first).Get(ctx, nil); err != nil {
				return err
			}
			workflow.GetSignalChannel(ctx, "wake").Receive(ctx, nil)
			return workflow.ExecuteActivity(ctx, first).Get(ctx, nil)
		}
	}
	register := func(w worker.Worker, first string) {
		w.RegisterWorkflowWithOptions(monitor(first), workflow.RegisterOptions{Name: types.HostMonitorWorkflow})
		for _, name := range []string{"Probe", "Upgraded"} {
			w.RegisterActivityWithOptions(func(context.Context) error { return nil }, activity.RegisterOptions{Name: name})
		}
	}
	c := ts.GetDefaultClient()
	old := worker.New(c, queue, worker.Options{})
	register(old, "Probe")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	start := func(host string) {
		// A short workflow task timeout: the SDK fails only a task's first attempt and lets the others time out.
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: types.HostMonitorID(host), TaskQueue: queue,
			WorkflowTaskTimeout: time.Second}, types.HostMonitorWorkflow)
		if err != nil {
			t.Fatal(err)
		}
		waitForStatus(t, ctx, func() bool { return historyHas(ctx, c, run.GetID(), enumspb.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) })
	}
	start("hv1")
	start("hv2")
	old.Stop()

	// Before the upgrade, `vmha check-replay` of the new build finds both monitors it would stall, idle as they are.
	s := Starter{Client: c, Out: io.Discard}
	code := func(first string) func(worker.WorkflowReplayer) {
		return func(r worker.WorkflowReplayer) {
			r.RegisterWorkflowWithOptions(monitor(first), workflow.RegisterOptions{Name: types.HostMonitorWorkflow})
		}
	}
	var b bytes.Buffer
	if err := (Starter{Client: c, Out: &b}).checkReplay(ctx, code("Probe")); err != nil || !strings.Contains(b.String(), "all 2 running workflows replay") {
		t.Errorf("check-replay with the running code: %v, printed %q; want both replayed", err, b.String())
	}
	b.Reset()
	var exit ExitError
	if err := (Starter{Client: c, Out: &b}).checkReplay(ctx, code("Upgraded")); !errors.As(err, &exit) || exit.Code != StatusNeedsPerson {
		t.Errorf("check-replay with incompatible code: %v, want exit code %d", err, StatusNeedsPerson)
	}
	for _, want := range []string{"CANNOT REPLAY  vmha-monitor-hv1 (HostMonitor, run ", "CANNOT REPLAY  vmha-monitor-hv2 (HostMonitor, run ",
		"[TMPRL1100]", "2 of 2 running workflows cannot be replayed by this build"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("check-replay printed\n%s\nwant %q", b.String(), want)
		}
	}

	reg := prometheus.NewRegistry()
	handler, flush := monitoring.SDKMetrics(reg, logger)
	defer flush.Close()
	nc := ts.NewClientWithOptions(client.Options{MetricsHandler: handler})
	defer nc.Close()
	upgraded := worker.New(nc, queue, worker.Options{})
	register(upgraded, "Upgraded")
	if err := upgraded.Start(); err != nil {
		t.Fatal(err)
	}
	defer upgraded.Stop()
	if err := c.SignalWorkflow(ctx, types.HostMonitorID("hv1"), "", "wake", nil); err != nil {
		t.Fatal(err)
	}

	var stuck *StuckTask
	waitForStatus(t, ctx, func() bool {
		var err error
		stuck, err = s.StuckTask(ctx, types.HostMonitorID("hv1"))
		if err != nil {
			t.Fatal(err)
		}
		return stuck != nil
	})
	if stuck.Cause != enumspb.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR || !strings.Contains(stuck.Message, "TMPRL1100") {
		t.Errorf("stuck task: cause %s, message %q; want a non-determinism error (TMPRL1100)", stuck.Cause, stuck.Message)
	}
	h := StatusHost{HostRow: HostRow{Name: "hv1", State: types.HostHealthy}}
	s.queryMonitor(ctx, &h)
	if h.Stuck == nil || h.QueryError != "" {
		t.Fatalf("queryMonitor: stuck %+v, query error %q; want the stuck task", h.Stuck, h.QueryError)
	}
	st := ClusterStatus{At: time.Now(), Hosts: []StatusHost{h}}
	if a := strings.Join(Attention(st), "\n"); !strings.Contains(a, "workflow code cannot replay this monitor's history") {
		t.Errorf("NEEDS A PERSON says %q, want the replay failure", a)
	}
	// The build before the upgrade still replays the stuck monitor: rolling back is a way out.
	if res, err := s.ReplayRunning(ctx, code("Probe")); err != nil || len(res) != 2 || res[0].Err != nil || res[1].Err != nil {
		t.Errorf("replay with the code before the upgrade: %+v (error %v), want both monitors replayed", res, err)
	}
	// hv2's monitor had no new workflow task: nothing the upgraded worker had to replay yet.
	if other, err := s.StuckTask(ctx, types.HostMonitorID("hv2")); err != nil || other != nil {
		t.Errorf("hv2: stuck %+v (error %v), want a monitor that makes progress", other, err)
	}

	waitForStatus(t, ctx, func() bool {
		return counted(t, reg, "temporal_workflow_task_execution_failed_total", map[string]string{
			"failure_reason": "NonDeterminismError", "workflow_type": types.HostMonitorWorkflow, "task_queue": queue,
			"namespace": ts.GetDefaultNamespace()}) >= 2
	})
}

// waitForStatus polls cond until it holds or ctx ends.
func waitForStatus(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func historyHas(ctx context.Context, c client.Client, id string, want enumspb.EventType) bool {
	it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return false
		}
		if e.GetEventType() == want {
			return true
		}
	}
	return false
}

// counted sums the counter name's series in reg that carry every label of want.
func counted(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			match := true
			for k, v := range want {
				match = match && labels[k] == v
			}
			if match {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
