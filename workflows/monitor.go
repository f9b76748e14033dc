package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

// historyLimit makes a monitor continue as new well before Temporal would suggest it: a monitor lives forever.
const historyLimit = 2000

// HostMonitor watches one host for as long as it is in the inventory, the runbook an on-call engineer would follow:
// watch until something changes, assess the change with the decision table, tell users, and when the host is
// confirmed dead run its recovery. It continues as new to keep its history short, carrying its state along.
func HostMonitor(ctx workflow.Context, in activities.MonitorInput) error {
	m := &monitor{MonitorInput: in, logger: workflow.GetLogger(ctx)}
	if err := workflow.SetQueryHandler(ctx, activities.QueryStatus, func() (activities.MonitorInput, error) {
		return m.MonitorInput, nil
	}); err != nil {
		return err
	}
	m.signals = newMonitorSignals(ctx)
	for !m.retired {
		if tooLong(ctx, historyLimit) {
			m.drainSignals(ctx)
			m.awaitNotifications(ctx)
			return workflow.NewContinueAsNewError(ctx, HostMonitor, m.MonitorInput)
		}
		if m.Maintenance {
			m.awaitSignal(ctx)
			continue
		}
		m.watch(ctx)
	}
	m.awaitNotifications(ctx)
	return nil
}

type monitor struct {
	activities.MonitorInput
	signals       monitorSignals
	retired       bool
	notifications []workflow.Future
	logger        log.Logger
}

type monitorSignals struct {
	spec, maintenance, fenced, retire workflow.ReceiveChannel
}

func newMonitorSignals(ctx workflow.Context) monitorSignals {
	return monitorSignals{
		spec:        workflow.GetSignalChannel(ctx, activities.SignalSpec),
		maintenance: workflow.GetSignalChannel(ctx, activities.SignalMaintenance),
		fenced:      workflow.GetSignalChannel(ctx, activities.SignalFenced),
		retire:      workflow.GetSignalChannel(ctx, activities.SignalRetire),
	}
}

// watch runs one WatchHost activity, which returns only when what it sees changes, and reacts to whichever comes
// first: that change or an operator's signal (which cancels the watch; the next loop starts a fresh one).
func (m *monitor) watch(ctx workflow.Context) {
	watchCtx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	probe := workflow.ExecuteActivity(watchOptions(watchCtx), controller.WatchHost, activities.WatchInput{
		Spec: m.Spec, Last: m.Last, WatchFor: watchFor,
	})
	sel := workflow.NewSelector(ctx)
	sel.AddFuture(probe, func(f workflow.Future) {
		var p types.Probe
		if err := f.Get(ctx, &p); err != nil {
			m.logger.Error("watch failed", "host", m.Spec.Name, "error", err)
			_ = workflow.Sleep(ctx, time.Second)
			return
		}
		m.observe(ctx, p)
	})
	m.addSignalHandlers(ctx, sel)
	sel.Select(ctx)
}

// observe applies the decision table to a probe and starts a recovery when the host is confirmed dead.
func (m *monitor) observe(ctx workflow.Context, p types.Probe) {
	m.Last = p
	state, recover := next(m.State, Assess(p))
	if !recover {
		m.transition(ctx, state, p.Detail)
		return
	}
	m.declareDead(ctx, fmt.Sprintf("unreachable (%s) and power %s", p.Reach, p.Power))
}

// declareDead opens a new incident and runs its recovery to the end before watching again.
func (m *monitor) declareDead(ctx workflow.Context, cause string) {
	m.Incident++
	m.transition(ctx, types.HostDead, cause)
	m.transition(ctx, types.HostRecovering, fmt.Sprintf("incident %d", m.Incident))
	m.transition(ctx, types.HostRecovered, m.recover(ctx, cause))
}

// recover runs the host's recovery as a child workflow whose ID is unique per incident, and summarises it.
func (m *monitor) recover(ctx workflow.Context, cause string) string {
	id := types.HostRecoveryID(m.Spec.Name, m.Incident)
	child := workflow.ExecuteChildWorkflow(childOptions(ctx, id, m.Spec.Name), HostRecovery, HostRecoveryInput{
		Host: m.Spec.Name, Incident: m.Incident, Cause: cause, DeclaredAt: m.Since,
	})
	var res types.RecoveryResult
	if err := child.Get(ctx, &res); err != nil {
		m.logger.Error("host recovery failed", "host", m.Spec.Name, "workflow_id", id, "error", err)
		return fmt.Sprintf("recovery %s failed: %v", id, err)
	}
	return fmt.Sprintf("%s by %s", res.Summary(), id)
}

// transition records a new state: search attributes for the Web UI, and a notification for users.
func (m *monitor) transition(ctx workflow.Context, to types.HostState, reason string) {
	from := m.State
	if to == from {
		return
	}
	now := workflow.Now(ctx)
	event := types.Event{Kind: types.EventHostState, Host: m.Spec.Name, From: from, To: to, Reason: reason, At: now,
		WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID}
	switch {
	case to == types.HostHealthy:
		m.TroubleSince = time.Time{}
	case from == types.HostHealthy || m.TroubleSince.IsZero():
		m.TroubleSince = now
	}
	if to == types.HostDead && !m.TroubleSince.IsZero() {
		event.Seconds = now.Sub(m.TroubleSince).Seconds()
	}
	m.State, m.Since = to, now
	if err := workflow.UpsertTypedSearchAttributes(ctx,
		types.HostStateAttr.ValueSet(string(to)), types.HostStateSinceAttr.ValueSet(now)); err != nil {
		m.logger.Error("upsert search attributes", "host", m.Spec.Name, "error", err)
	}
	m.logger.Info("host state", "host", m.Spec.Name, "from", from, "to", to, "reason", reason)
	m.notifications = append(pending(m.notifications), workflow.ExecuteActivity(notifyOptions(ctx), controller.Notify, event))
}

func (m *monitor) addSignalHandlers(ctx workflow.Context, sel workflow.Selector) {
	sel.AddReceive(m.signals.spec, func(c workflow.ReceiveChannel, _ bool) {
		var spec types.HostSpec
		c.Receive(ctx, &spec)
		m.setSpec(ctx, spec)
	})
	sel.AddReceive(m.signals.maintenance, func(c workflow.ReceiveChannel, _ bool) {
		var on bool
		c.Receive(ctx, &on)
		m.setMaintenance(ctx, on)
	})
	sel.AddReceive(m.signals.fenced, func(c workflow.ReceiveChannel, _ bool) {
		var n activities.FenceNotice
		c.Receive(ctx, &n)
		m.fenced(ctx, n)
	})
	sel.AddReceive(m.signals.retire, func(c workflow.ReceiveChannel, _ bool) {
		var reason string
		c.Receive(ctx, &reason)
		m.logger.Info("monitor retired", "host", m.Spec.Name, "reason", reason)
		m.retired = true
	})
}

// setSpec takes a re-applied inventory entry; the next watch probes with it from scratch.
func (m *monitor) setSpec(ctx workflow.Context, spec types.HostSpec) {
	m.Spec = spec
	m.Last = types.Probe{}
	if err := workflow.UpsertMemo(ctx, map[string]interface{}{activities.MemoSpec: spec}); err != nil {
		m.logger.Error("upsert memo", "host", spec.Name, "error", err)
	}
}

// setMaintenance pauses the monitor (nothing is recovered while an operator works on the host) or resumes it.
func (m *monitor) setMaintenance(ctx workflow.Context, on bool) {
	m.Maintenance = on
	m.Last = types.Probe{}
	if on {
		m.transition(ctx, types.HostMaintenance, "operator")
	}
}

// fenced is vmha's own power-off of the host (manual failover), already confirmed by the BMC: dead by definition,
// and judged like a probe saying so. The watch may have seen the power-off first: a host already dead,
// recovering or recovered starts no second incident.
func (m *monitor) fenced(ctx workflow.Context, n activities.FenceNotice) {
	if _, recover := next(m.State, types.HostDead); !recover {
		return
	}
	m.declareDead(ctx, fmt.Sprintf("fenced by %s: %s", n.By, n.Reason))
}

// awaitSignal blocks a paused monitor until an operator's signal arrives.
func (m *monitor) awaitSignal(ctx workflow.Context) {
	sel := workflow.NewSelector(ctx)
	m.addSignalHandlers(ctx, sel)
	sel.Select(ctx)
}

// drainSignals handles every signal already received, so none is lost across continue-as-new.
func (m *monitor) drainSignals(ctx workflow.Context) {
	for m.signals.pending() {
		sel := workflow.NewSelector(ctx)
		m.addSignalHandlers(ctx, sel)
		sel.Select(ctx)
	}
}

func (s monitorSignals) pending() bool {
	return s.spec.Len()+s.maintenance.Len()+s.fenced.Len()+s.retire.Len() > 0
}

// pending drops the notifications already delivered.
func pending(fs []workflow.Future) []workflow.Future {
	out := fs[:0]
	for _, f := range fs {
		if !f.IsReady() {
			out = append(out, f)
		}
	}
	return out
}

func (m *monitor) awaitNotifications(ctx workflow.Context) {
	awaitAll(ctx, m.notifications...)
	m.notifications = nil
}
