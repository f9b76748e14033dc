package workflows

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

// historyLimit makes a monitor continue as new well before Temporal would suggest it: a monitor lives forever.
const historyLimit = 2000

// Retry rounds of a recovery that left VMs behind back off from retryFirst to retryMax: a host with room that
// powers on is used within about retryMax.
const (
	retryFirst = 5 * time.Second
	retryMax   = 30 * time.Second
)

// restartOnOwner is why a round restarts the VMs left behind on their own host.
const restartOnOwner = "host is healthy again: restart the VMs left behind on it"

// HostMonitor watches one host for as long as it is in the inventory, the runbook an on-call engineer would follow:
// watch until something changes, assess the change with the decision table, tell users, and when the host is
// confirmed dead run its recovery, round after round until every HA VM it owned runs again. The watch goes on while
// a recovery runs. It continues as new to keep its history short, carrying its state along, but only when nothing is
// in flight, so no signal, notification or recovery round is lost on the way.
func HostMonitor(ctx workflow.Context, in activities.MonitorInput) error {
	m := &monitor{MonitorInput: in, logger: workflow.GetLogger(ctx)}
	if err := workflow.SetQueryHandler(ctx, activities.QueryStatus, func() (activities.MonitorInput, error) {
		return m.MonitorInput, nil
	}); err != nil {
		return err
	}
	m.signals = newMonitorSignals(ctx)
	// A run continued as new picks up the pending fence retry or reminder the last run's timer held.
	m.attend(ctx)
	for !m.retired {
		if tooLong(ctx, historyLimit) && m.idle() {
			m.drainSignals(ctx)
			if m.idle() && !m.retired {
				return workflow.NewContinueAsNewError(ctx, HostMonitor, m.MonitorInput)
			}
		}
		m.step(ctx)
	}
	m.stopWatch()
	m.awaitNotifications(ctx)
	return nil
}

type monitor struct {
	activities.MonitorInput
	signals       monitorSignals
	retired       bool
	notifications []workflow.Future
	logger        log.Logger
	// probe is the running watch, round the running recovery round, retry the timer of the next round.
	probe       workflow.Future
	cancelProbe workflow.CancelFunc
	round       workflow.Future
	retry       workflow.Future
	// attention is the timer of the next fencing attempt of a hung host, or the next reminder about an unknown one.
	attention workflow.Future
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

// step waits for whichever comes first: what the watch saw, the end of a recovery round, the time to retry one,
// or an operator's signal.
func (m *monitor) step(ctx workflow.Context) {
	sel := workflow.NewSelector(ctx)
	if !m.Maintenance {
		m.startWatch(ctx)
		sel.AddFuture(m.probe, func(f workflow.Future) { m.probed(ctx, f) })
		m.armRetry(ctx)
	}
	if m.round != nil {
		sel.AddFuture(m.round, func(f workflow.Future) { m.roundDone(ctx, f) })
	}
	if m.retry != nil {
		sel.AddFuture(m.retry, func(workflow.Future) { m.retryDue(ctx) })
	}
	if m.attention != nil {
		sel.AddFuture(m.attention, func(workflow.Future) { m.attentionDue(ctx) })
	}
	if tooLong(ctx, historyLimit) {
		// Waiting to continue as new: wake up when the last notification is delivered.
		for _, f := range m.notifications {
			sel.AddFuture(f, func(workflow.Future) {})
		}
	}
	m.addSignalHandlers(ctx, sel)
	sel.Select(ctx)
}

// startWatch runs one WatchHost activity, which returns only when what it sees changes, unless one runs already.
func (m *monitor) startWatch(ctx workflow.Context) {
	if m.probe != nil {
		return
	}
	watchCtx, cancel := workflow.WithCancel(ctx)
	m.cancelProbe = cancel
	m.probe = workflow.ExecuteActivity(says(watchOptions(watchCtx), "watch %s (network, BMC, storage heartbeat) until something changes", m.Spec.Name), controller.WatchHost, activities.WatchInput{
		Spec: m.Spec, Last: m.Last, WatchFor: watchFor,
	})
}

// stopWatch cancels the running watch: its spec is outdated, or the monitor pauses or ends.
func (m *monitor) stopWatch() {
	if m.probe != nil {
		m.cancelProbe()
		m.probe, m.cancelProbe = nil, nil
	}
}

func (m *monitor) probed(ctx workflow.Context, f workflow.Future) {
	m.probe, m.cancelProbe = nil, nil
	var p types.Probe
	if err := f.Get(ctx, &p); err != nil {
		m.logger.Error("watch failed", "host", m.Spec.Name, "error", err)
		_ = workflow.Sleep(ctx, time.Second)
		return
	}
	m.observe(ctx, p)
}

// observe applies the decision table to a probe. While a recovery round runs, the round's end decides the state.
// A host that failed to recover and is healthy again gets its left-behind VMs back on itself.
func (m *monitor) observe(ctx workflow.Context, p types.Probe) {
	m.Last = p
	if m.round != nil {
		m.logger.Info("probe during recovery", "host", m.Spec.Name, "probe", p.Key())
		return
	}
	assessed := Assess(p)
	if m.State == types.HostRecoveryFailed && assessed == types.HostHealthy {
		m.startRound(ctx, true, restartOnOwner)
		return
	}
	state, recover := next(m.State, assessed)
	if recover {
		m.declareDead(ctx, deathCause(p))
		return
	}
	// A probe that leaves the state as it is keeps the pending reminder or fencing retry: re-arming it at every
	// probe would postpone an unknown host's reminders for as long as its probes keep changing (lab scenario i7_4:
	// one reminder in 11 s with VMHA_UNKNOWN_REMINDER=5s, the heartbeat verdict's change having re-armed it).
	changed := state != m.State
	reason := p.Detail
	if reason == "" {
		reason = fmt.Sprintf("network %s, power %s, storage heartbeat %s", p.Reach, p.Power, cmp.Or(string(p.Heartbeat), "unknown"))
	}
	m.transition(ctx, state, reason)
	if changed || m.attention == nil {
		m.attend(ctx)
	}
}

// declareDead opens a new incident, named by the time of death so it never collides with an earlier one, and
// starts its first recovery round.
func (m *monitor) declareDead(ctx workflow.Context, cause string) {
	now := workflow.Now(ctx)
	m.Incident, m.DeclaredAt, m.Round, m.Cause = types.IncidentID(now), now, 0, cause
	m.transition(ctx, types.HostDead, cause)
	m.startRound(ctx, false, cause)
}

// startRound runs one recovery round of the current incident as a child workflow, without waiting: the watch and
// the signals go on meanwhile. onOwner restarts the VMs still owned by the host on the host itself.
func (m *monitor) startRound(ctx workflow.Context, onOwner bool, reason string) {
	m.Round++
	m.retry = nil
	id := types.HostRecoveryID(m.Spec.Name, m.Incident, m.Round)
	m.transition(ctx, types.HostRecovering, fmt.Sprintf("round %d (%s): %s", m.Round, id, reason))
	where := "elsewhere"
	if onOwner {
		where = "on " + m.Spec.Name + " itself"
	}
	summary := fmt.Sprintf("Recover %s's HA VMs %s: round %d of the incident of %s", m.Spec.Name, where, m.Round, m.DeclaredAt.UTC().Format(time.RFC3339))
	m.round = workflow.ExecuteChildWorkflow(childOptions(ctx, id, m.Spec.Name, summary, "Why: "+reason+"\n\nCause of death: "+m.Cause), HostRecovery, HostRecoveryInput{
		Host: m.Spec.Name, Incident: m.Incident, Round: m.Round, Cause: m.Cause, DeclaredAt: m.DeclaredAt,
		OnOwner: onOwner,
	})
}

// roundDone ends a round: the host is recovered only when every VM it owned runs elsewhere and every catalog file
// was read; anything else is recovery-failed, at error level, and retried.
func (m *monitor) roundDone(ctx workflow.Context, f workflow.Future) {
	m.round = nil
	id := types.HostRecoveryID(m.Spec.Name, m.Incident, m.Round)
	var res types.RecoveryResult
	if err := f.Get(ctx, &res); err != nil {
		m.logger.Error("recovery round failed", "host", m.Spec.Name, "workflow_id", id, "error", err)
		m.transition(ctx, types.HostRecoveryFailed, fmt.Sprintf("%s failed: %s", id, types.Explain(err)))
		return
	}
	if !res.Complete() {
		m.transition(ctx, types.HostRecoveryFailed, fmt.Sprintf("%s by %s: %s", res.Summary(), id, leftBehindReasons(res)))
		return
	}
	m.RetryAfter = 0
	if Assess(m.Last) == types.HostHealthy {
		// The host came back during the round, or the round restarted its VMs on it.
		m.transition(ctx, types.HostHealthy, fmt.Sprintf("%s by %s", res.Summary(), id))
		return
	}
	m.transition(ctx, types.HostRecovered, fmt.Sprintf("%s by %s", res.Summary(), id))
}

// armRetry schedules the next round of a recovery that left VMs behind, backing off to retryMax.
func (m *monitor) armRetry(ctx workflow.Context) {
	if m.State != types.HostRecoveryFailed || m.round != nil || m.retry != nil {
		return
	}
	m.RetryAfter = min(max(2*m.RetryAfter, retryFirst), retryMax)
	m.retry = workflow.NewTimer(ctx, m.RetryAfter)
}

// retryDue runs the next round, but only where it is safe: elsewhere while the host is still dead (a host that
// powered on may run its VMs again), on the host itself once it is healthy. In between, it waits for the watch.
func (m *monitor) retryDue(ctx workflow.Context) {
	m.retry = nil
	switch Assess(m.Last) {
	case types.HostDead:
		m.startRound(ctx, false, "retry the VMs left behind")
	case types.HostHealthy:
		m.startRound(ctx, true, restartOnOwner)
	default:
		m.logger.Warn("VMs left behind, but the host is neither dead nor healthy: waiting", "host", m.Spec.Name, "probe", m.Last.Key())
	}
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
		// The trouble began with the first missed probe, which the watch reports only once it decides something.
		m.TroubleSince = now.Add(-m.Last.Unreachable)
	}
	if to == types.HostDead && !m.TroubleSince.IsZero() {
		event.Seconds = now.Sub(m.TroubleSince).Seconds()
	}
	m.State, m.Since, m.Reason = to, now, reason
	workflow.SetCurrentDetails(ctx, m.story())
	if err := workflow.UpsertTypedSearchAttributes(ctx,
		types.HostStateAttr.ValueSet(string(to)), types.HostStateSinceAttr.ValueSet(now)); err != nil {
		m.logger.Error("upsert search attributes", "host", m.Spec.Name, "error", err)
	}
	m.logger.Info("host state", "host", m.Spec.Name, "from", from, "to", to, "reason", reason)
	m.notify(ctx, event)
}

// notify sends an event without waiting for it: a slow webhook never pauses the watch.
func (m *monitor) notify(ctx workflow.Context, e types.Event) {
	m.notifications = append(pending(m.notifications), notify(ctx, e, e.Kind, e.Reason))
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
	m.stopWatch()
	if err := workflow.UpsertMemo(ctx, map[string]interface{}{activities.MemoSpec: spec}); err != nil {
		m.logger.Error("upsert memo", "host", spec.Name, "error", err)
	}
}

// setMaintenance pauses the monitor (nothing is recovered or retried while an operator works on the host) or
// resumes it. A round already running finishes.
func (m *monitor) setMaintenance(ctx workflow.Context, on bool) {
	m.Maintenance = on
	m.Last = types.Probe{}
	m.stopWatch()
	m.retry = nil
	if on {
		m.transition(ctx, types.HostMaintenance, "operator")
	}
}

// fenced is vmha's own power-off of the host (manual failover). A signal is only a claim: anyone with access to
// the namespace can send one, so the BMC is asked first and nothing moves unless it confirms the power is off.
// A host already dead or recovering starts nothing new, nor does one recovered from a death declared after the
// failover began (the watch saw its power-off first); a recovery-failed host, or one recovered earlier, gets
// another round for the VMs the catalog still gives it; any other host is declared dead.
func (m *monitor) fenced(ctx workflow.Context, n activities.FenceNotice) {
	power, err := confirmedPower(ctx, m.Spec)
	off := err == nil && (power == types.PowerOff || power == types.PowerFault)
	cause := fmt.Sprintf("fenced by %s: %s", n.By, n.Reason)
	if !off && n.ConfirmedOffBy != "" && err == nil && bmcUnusable(power) && m.Last.Reach == types.ReachDown {
		// Nobody can ask the BMC: an operator's word, recorded with who and why, is the evidence.
		off, cause = true, fmt.Sprintf("confirmed powered off by %s (%s): %s", n.ConfirmedOffBy, n.By, n.Reason)
	}
	if !off {
		bmcSays := fmt.Sprintf("the BMC says power %s", power)
		if err != nil {
			bmcSays = fmt.Sprintf("the BMC could not confirm the power (%v)", err)
		}
		m.alert(ctx, fmt.Sprintf("fenced signal from %q ignored: %s and the network is %s", n.By, bmcSays, m.Last.Reach))
		return
	}
	switch {
	case m.round != nil || m.State == types.HostDead || m.State == types.HostRecovering:
	case m.State == types.HostRecovered && !m.DeclaredAt.Before(n.Began):
	case m.State == types.HostRecovered || m.State == types.HostRecoveryFailed:
		m.startRound(ctx, false, cause)
	default:
		m.declareDead(ctx, cause)
	}
}

// idle is true when nothing would be lost by continuing as new: no recovery round or notification in flight.
func (m *monitor) idle() bool {
	m.notifications = pending(m.notifications)
	return m.round == nil && len(m.notifications) == 0
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

// leftBehindReasons names the first VMs left behind and why, and the unreadable catalog files, in one line.
func leftBehindReasons(res types.RecoveryResult) string {
	var parts []string
	for _, o := range res.LeftBehind() {
		parts = append(parts, fmt.Sprintf("%s: %s", o.VM, o.Reason))
	}
	for _, u := range res.Unreadable {
		parts = append(parts, fmt.Sprintf("catalog file %s unreadable: %s", u.File, u.Reason))
	}
	if len(parts) > 3 {
		parts = append(parts[:3], fmt.Sprintf("and %d more", len(parts)-3))
	}
	return strings.Join(parts, "; ")
}

// confirmedPower asks the BMC until readings agree (any "on" wins at once), as a fence decision needs.
func confirmedPower(ctx workflow.Context, spec types.HostSpec) (types.PowerState, error) {
	var state types.PowerState
	err := workflow.ExecuteActivity(says(bmcReadOptions(ctx), "ask %s's BMC until its answers agree", spec.Name), controller.PowerStatus, spec).Get(ctx, &state)
	return state, err
}
