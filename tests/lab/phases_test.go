package lab_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/converter"

	"vmha/activities/bmc"
	"vmha/types"
)

// milestones of one recovery after a power loss, each measured from the start of the power-off command: the
// monitor's probes give the first miss, the network declared down and the BMC's confirmed "off"; the webhook gives
// "dead"; the RecoverVM history gives placement, define and the start handed to the target's worker; the lab's
// polling gives the VM running on its new host (virsh); vm.recovery.done is vmha's own confirmation.
type milestones struct {
	firstMiss, networkDown, bmcConfirmed, dead, placed, defined, startIssued, running, confirmed time.Duration
}

// phaseRows are the milestones in the order they happen, with what each one ends.
var phaseRows = []struct {
	name string
	f    func(milestones) time.Duration
}{
	{"first missed probe", func(m milestones) time.Duration { return m.firstMiss }},
	{"network declared down", func(m milestones) time.Duration { return m.networkDown }},
	{"BMC confirmed off", func(m milestones) time.Duration { return m.bmcConfirmed }},
	{"host declared dead", func(m milestones) time.Duration { return m.dead }},
	{"placement done", func(m milestones) time.Duration { return m.placed }},
	{"define done", func(m milestones) time.Duration { return m.defined }},
	{"start issued on the target (vmha's own share ends)", func(m milestones) time.Duration { return m.startIssued }},
	{"running on the target (virsh)", func(m milestones) time.Duration { return m.running }},
	{"vmha confirmed it running (vm.recovery.done)", func(m milestones) time.Duration { return m.confirmed }},
	{"restart: start issued -> running (virsh)", func(m milestones) time.Duration { return m.running - m.startIssued }},
}

// milestonesOf reads one power loss's milestones from the histories of x's monitor and of the VM's recovery.
func (w *world) milestonesOf(t *testing.T, x, vm, uuid string, off time.Time, dead, running, confirmed time.Time) milestones {
	probes := w.probesSince(t, x, off)
	m := milestones{dead: dead.Sub(off), running: running.Sub(off), confirmed: confirmed.Sub(off)}
	for _, p := range probes {
		if m.firstMiss == 0 && p.Reach != types.ReachUp {
			m.firstMiss = p.At.Add(-p.Unreachable).Sub(off)
		}
		if m.networkDown == 0 && p.Reach == types.ReachDown {
			m.networkDown = p.At.Sub(off)
		}
		if m.bmcConfirmed == 0 && (p.Power == types.PowerOff || p.Power == types.PowerFault) {
			m.bmcConfirmed = p.At.Sub(off)
		}
	}
	if m.firstMiss == 0 || m.networkDown == 0 || m.bmcConfirmed == 0 {
		t.Fatalf("%s's monitor history since the power-off lacks a milestone: %+v (probes %+v)", x, m, probes)
	}
	recovery := w.latestRecoveryOf(t, uuid, x)
	steps := w.activityTimes(t, recovery, "")
	if rounds := w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s'", types.HostRecoveryWorkflow, types.HostAttr.GetName(), x)); len(rounds) > 0 {
		w.logTimeline(t, slices.Max(rounds), off)
	}
	w.logTimeline(t, recovery, off)
	m.placed = steps.completed["Place"].Sub(off)
	m.defined = steps.completed["DefineFromCatalog"].Sub(off)
	m.startIssued = steps.started["StartDomain"].Sub(off)
	if steps.completed["Place"].IsZero() || steps.completed["DefineFromCatalog"].IsZero() || steps.started["StartDomain"].IsZero() {
		t.Fatalf("%s's history lacks a step: %+v", recovery, steps)
	}
	return m
}

// probesSince decodes the WatchHost results of x's monitor taken since t0, oldest first, following the monitor
// back across continue-as-new.
func (w *world) probesSince(t *testing.T, x string, t0 time.Time) []types.Probe {
	var probes []types.Probe
	for runID := ""; ; {
		steps := w.activityTimes(t, types.HostMonitorID(x), runID)
		for _, p := range steps.results["WatchHost"] {
			var probe types.Probe
			if err := converter.GetDefaultDataConverter().FromPayloads(p, &probe); err != nil {
				t.Fatalf("decode a probe of %s: %v", x, err)
			}
			if !probe.At.Before(t0) {
				probes = append(probes, probe)
			}
		}
		if steps.continuedFrom == "" || steps.startedAt.Before(t0) {
			break
		}
		runID = steps.continuedFrom
	}
	sort.Slice(probes, func(i, j int) bool { return probes[i].At.Before(probes[j].At) })
	return probes
}

// latestRecoveryOf is the RecoverVM workflow of the VM's newest incident on host x.
func (w *world) latestRecoveryOf(t *testing.T, uuid, x string) string {
	var ids []string
	for _, id := range w.recoveriesOfVM(t, uuid) {
		if strings.HasPrefix(id, fmt.Sprintf("vmha-recover-vm-%s-%s-", uuid, x)) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		t.Fatalf("no RecoverVM of %s from %s", uuid, x)
	}
	return slices.Max(ids)
}

// historySteps are the times of one run's activities by type: when the first of each was handed to a worker and
// when it completed, the results of each, and where the run came from.
type historySteps struct {
	started, completed map[string]time.Time
	results            map[string][]*commonpb.Payloads
	startedAt          time.Time
	continuedFrom      string
}

func (w *world) activityTimes(t *testing.T, workflowID, runID string) historySteps {
	s := historySteps{started: map[string]time.Time{}, completed: map[string]time.Time{}, results: map[string][]*commonpb.Payloads{}}
	scheduled := map[int64]string{}
	iter := w.client.GetWorkflowHistory(context.Background(), workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		e, err := iter.Next()
		if err != nil {
			t.Fatalf("history of %s: %v", workflowID, err)
		}
		at := e.GetEventTime().AsTime()
		switch a := e.GetAttributes().(type) {
		case *historypb.HistoryEvent_WorkflowExecutionStartedEventAttributes:
			s.startedAt, s.continuedFrom = at, a.WorkflowExecutionStartedEventAttributes.GetContinuedExecutionRunId()
		case *historypb.HistoryEvent_ActivityTaskScheduledEventAttributes:
			scheduled[e.GetEventId()] = a.ActivityTaskScheduledEventAttributes.GetActivityType().GetName()
		case *historypb.HistoryEvent_ActivityTaskStartedEventAttributes:
			name := scheduled[a.ActivityTaskStartedEventAttributes.GetScheduledEventId()]
			if _, ok := s.started[name]; !ok {
				s.started[name] = at
			}
		case *historypb.HistoryEvent_ActivityTaskCompletedEventAttributes:
			name := scheduled[a.ActivityTaskCompletedEventAttributes.GetScheduledEventId()]
			if _, ok := s.completed[name]; !ok {
				s.completed[name] = at
			}
			s.results[name] = append(s.results[name], a.ActivityTaskCompletedEventAttributes.GetResult())
		}
	}
	return s
}

// bareStart is QEMU's own start as the lab sees it, the yardstick of vmha's restart: a VM of the same size defined
// with virsh on host, then `virsh start` and the same polling as the recovery's until virsh reports it running.
func (w *world) bareStart(t *testing.T, host string, runs int) []time.Duration {
	name := "bare-start"
	w.virshVM(t, host, name, false)
	var took []time.Duration
	for i := 0; i < runs; i++ {
		w.virsh(t, host, "destroy", name)
		start := time.Now()
		w.virsh(t, host, "start", name)
		w.eventually(t, 30*time.Second, name+" running", func() error {
			states, err := w.lab.DomainStates(context.Background())
			if err != nil {
				return err
			}
			if states[host][name] != "running" {
				return fmt.Errorf("%s is %q", name, states[host][name])
			}
			return nil
		})
		took = append(took, time.Since(start))
	}
	w.virsh(t, host, "destroy", name)
	w.virsh(t, host, "undefine", name)
	return took
}

// spread is the min, median and max of d, in seconds.
func spread(d []time.Duration) (float64, float64, float64) {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[0].Seconds(), s[len(s)/2].Seconds(), s[len(s)-1].Seconds()
}

func printPhaseTable(samples []milestones, bare []time.Duration) {
	fmt.Printf("\nvmha lab: BMC power-off of the VM's host -> VM running elsewhere, milestones from the power-off (%d runs)\n\n", len(samples))
	fmt.Println("| milestone | min s | median s | max s |")
	fmt.Println("|---|---|---|---|")
	for _, row := range phaseRows {
		v := make([]time.Duration, len(samples))
		for i, s := range samples {
			v[i] = row.f(s)
		}
		lo, med, hi := spread(v)
		fmt.Printf("| %s | %.3f | %.3f | %.3f |\n", row.name, lo, med, hi)
	}
	if len(bare) > 0 {
		lo, med, hi := spread(bare)
		fmt.Printf("| QEMU's own start: virsh start -> running (virsh), same VM size and polling, %d runs | %.3f | %.3f | %.3f |\n",
			len(bare), lo, med, hi)
	}
}

// roundTrips measures what the probe settings are chosen from: n TCP connects to host's probe port and n BMC power
// readings (each a whole IPMI session), with the machine as it is while the bench runs.
func (w *world) roundTrips(t *testing.T, host string, n int) (dials, bmcs []time.Duration) {
	addr, err := w.lab.Address(host)
	if err != nil {
		t.Fatal(err)
	}
	port, err := w.lab.BMCPort(host)
	if err != nil {
		t.Fatal(err)
	}
	pwFile, err := w.lab.PasswordFile(host)
	if err != nil {
		t.Fatal(err)
	}
	pw, err := os.ReadFile(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	spec := types.HostSpec{Name: host, Address: addr}
	ipmi := bmc.New(time.Second, nil)
	bmcSpec := types.BMCSpec{Address: "127.0.0.1", Port: port, User: "admin"}
	for i := 0; i < n; i++ {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", spec.ProbeAddress(), 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", spec.ProbeAddress(), err)
		}
		dials = append(dials, time.Since(start))
		_ = conn.Close()
		start = time.Now()
		if _, err := ipmi.PowerStatus(context.Background(), bmcSpec, strings.TrimSpace(string(pw))); err != nil {
			t.Fatalf("power status of %s: %v", host, err)
		}
		bmcs = append(bmcs, time.Since(start))
		time.Sleep(10 * time.Millisecond)
	}
	return dials, bmcs
}

func printRoundTrips(dials, bmcs []time.Duration) {
	q := func(v []time.Duration, p float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	fmt.Printf("\nround trips on the lab (%d of each), ms\n\n| what | median | p99 | max |\n|---|---|---|---|\n", len(dials))
	fmt.Printf("| TCP connect to the probe port | %.2f | %.2f | %.2f |\n", q(dials, 0.5), q(dials, 0.99), q(dials, 1))
	fmt.Printf("| BMC power reading (one IPMI session) | %.2f | %.2f | %.2f |\n", q(bmcs, 0.5), q(bmcs, 0.99), q(bmcs, 1))
}

// logTimeline logs every event of a workflow's history with its time from t0 (VMHA_BENCH_TIMELINE=1): where a
// recovery's time goes, event by event.
func (w *world) logTimeline(t *testing.T, workflowID string, t0 time.Time) {
	if os.Getenv("VMHA_BENCH_TIMELINE") == "" {
		return
	}
	var lines []string
	names := map[int64]string{}
	iter := w.client.GetWorkflowHistory(context.Background(), workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		e, err := iter.Next()
		if err != nil {
			t.Fatalf("history of %s: %v", workflowID, err)
		}
		name := ""
		switch a := e.GetAttributes().(type) {
		case *historypb.HistoryEvent_ActivityTaskScheduledEventAttributes:
			name = a.ActivityTaskScheduledEventAttributes.GetActivityType().GetName()
			names[e.GetEventId()] = name
		case *historypb.HistoryEvent_ActivityTaskStartedEventAttributes:
			name = names[a.ActivityTaskStartedEventAttributes.GetScheduledEventId()]
		case *historypb.HistoryEvent_ActivityTaskCompletedEventAttributes:
			name = names[a.ActivityTaskCompletedEventAttributes.GetScheduledEventId()]
		case *historypb.HistoryEvent_StartChildWorkflowExecutionInitiatedEventAttributes:
			name = a.StartChildWorkflowExecutionInitiatedEventAttributes.GetWorkflowType().GetName()
		}
		lines = append(lines, fmt.Sprintf("%7.3f %s %s", e.GetEventTime().AsTime().Sub(t0).Seconds(), e.GetEventType(), name))
	}
	t.Logf("timeline of %s:\n%s", workflowID, strings.Join(lines, "\n"))
}
