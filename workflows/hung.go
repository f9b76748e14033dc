package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// fenceRetry is how long a hung host whose fencing failed waits before the next attempt.
const fenceRetry = 10 * time.Second

// attend acts on a state that needs more than a notification: a hung host is fenced and then recovered (or only
// reported, if VMHA_FENCE_HUNG is off); a host that lost the shared storage is fenced and recovered only if
// VMHA_FENCE_STORAGE_LOST is on; a host nobody can tell is off is reported again and again until someone acts.
func (m *monitor) attend(ctx workflow.Context) {
	m.attention = nil
	switch m.State {
	case types.HostHung, types.HostStorageLost:
		policy, err := loadPolicy(ctx)
		if err != nil {
			m.logger.Error("load policy", "host", m.Spec.Name, "error", err)
			m.attention = workflow.NewTimer(ctx, fenceRetry)
			return
		}
		if m.State == types.HostHung && policy.FenceHung || m.State == types.HostStorageLost && policy.FenceStorageLost {
			m.fenceAndDeclare(ctx, policy)
		}
	case types.HostUnknown:
		m.remind(ctx)
	}
}

// fenceAndDeclare powers the host off hard and waits until the BMC confirms it, then declares it dead: only a host
// that is off can no longer write its disks. A fence that fails is reported and tried again.
func (m *monitor) fenceAndDeclare(ctx workflow.Context, policy types.Policy) {
	why := fmt.Sprintf("%s: network %s, power %s, storage heartbeat %s", m.State, m.Last.Reach, m.Last.Power, m.Last.Heartbeat)
	if err := fenceWith(ctx, m.Spec, policy); err != nil {
		m.alert(ctx, fmt.Sprintf("fencing the %s host failed, trying again in %s: %s", m.State, fenceRetry, types.Explain(err)))
		m.attention = workflow.NewTimer(ctx, fenceRetry)
		return
	}
	m.declareDead(ctx, why+"; fenced by vmha, the BMC confirms power off")
}

// remind tells users again that a host may be down with its VMs, and nobody can tell: the BMC cannot be asked.
func (m *monitor) remind(ctx workflow.Context) {
	policy, err := loadPolicy(ctx)
	if err != nil || policy.UnknownReminder <= 0 {
		return
	}
	m.attention = workflow.NewTimer(ctx, policy.UnknownReminder)
}

// attentionDue fires the pending attempt or reminder, if the state still calls for it.
func (m *monitor) attentionDue(ctx workflow.Context) {
	m.attention = nil
	if m.round != nil {
		return
	}
	if m.State == types.HostUnknown {
		m.alert(ctx, fmt.Sprintf("still unknown since %s: unreachable and its BMC cannot be asked, so its VMs may be down; "+
			"if it is off, say so: vmha failover --host %s --confirm-powered-off --reason TEXT", m.Since.UTC().Format(time.RFC3339), m.Spec.Name))
	}
	m.attend(ctx)
}

// alert tells users about something a person must look at, at error level.
func (m *monitor) alert(ctx workflow.Context, reason string) {
	m.logger.Error(reason, "host", m.Spec.Name)
	m.notify(ctx, types.Event{Kind: types.EventHostAlert, Host: m.Spec.Name, Reason: reason, At: workflow.Now(ctx),
		WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID})
}

// deathCause says why a probe shows the host dead.
func deathCause(p types.Probe) string {
	if p.Power != types.PowerOff && p.Power != types.PowerFault && p.Heartbeat == types.HeartbeatSelfFenced {
		return fmt.Sprintf("unreachable (%s), BMC %s, and the storage heartbeat stopped for longer than the watchdog it armed (%s): the host fenced itself",
			p.Reach, p.Power, p.Watchdog.Timeout)
	}
	return fmt.Sprintf("unreachable (%s, no answer for %.2f s) and power %s", p.Reach, p.Unreachable.Seconds(), p.Power)
}

// bmcUnusable is a BMC that gave no answer vmha can act on.
func bmcUnusable(p types.PowerState) bool {
	return p == types.PowerUnreachable || p == types.PowerAuthFailed
}

// story is the monitor's current details in the Web UI: what vmha sees of the host now, and what it does about it,
// in the words of the decision table.
func (m *monitor) story() string {
	p := m.Last
	seen := "nothing yet"
	if p.Reach != "" {
		worker := "its vmha worker polls"
		if !p.WorkerAlive {
			worker = "its vmha worker is not seen"
		}
		beat := "storage heartbeat " + string(p.Heartbeat)
		if p.Heartbeat == types.HeartbeatUnknown {
			beat = "storage heartbeat not known"
		}
		network := string(p.Reach)
		if p.Unreachable > 0 {
			network += fmt.Sprintf(" (no answer for %.2f s)", p.Unreachable.Seconds())
		}
		seen = fmt.Sprintf("network %s, BMC says power %s, %s, %s", network, p.Power, beat, worker)
	}
	s := fmt.Sprintf("%s is %s since %s.\n\nWhat vmha sees: %s.\n\nWhat vmha does: %s", m.Spec.Name, m.State,
		m.Since.UTC().Format(time.RFC3339), seen, whatVmhaDoes(m.State))
	if m.Reason != "" {
		s += "\n\nWhy: " + m.Reason
	}
	if m.Incident != "" {
		s += fmt.Sprintf("\n\nLast incident: %s (round %d), cause: %s", m.Incident, m.Round, m.Cause)
	}
	return s
}

// whatVmhaDoes is the action of each state, as the README's decision table says it.
func whatVmhaDoes(s types.HostState) string {
	switch s {
	case types.HostHealthy:
		return "watches it; it can take recovered VMs."
	case types.HostSuspect:
		return "watches closer; nothing moves yet."
	case types.HostIsolated:
		return "nothing: unreachable but powered on and still writing its storage heartbeat, so its VMs may still run; starting them elsewhere would corrupt their disks."
	case types.HostUnknown:
		return "nothing until someone confirms it is off (vmha failover --confirm-powered-off), or its armed watchdog's timeout has passed: its BMC cannot be asked."
	case types.HostHung:
		return "fences it (hard power-off, confirmed by the BMC), then recovers its VMs elsewhere; with VMHA_FENCE_HUNG=false only this alert."
	case types.HostStorageLost:
		return "alerts: it lost the shared storage; fenced and recovered only with VMHA_FENCE_STORAGE_LOST=true."
	case types.HostDead:
		return "recovers its HA VMs elsewhere: its power is confirmed off."
	case types.HostRecovering:
		return "runs a recovery round (see its HostRecovery child)."
	case types.HostRecovered:
		return "nothing more: every HA VM it had runs elsewhere; it takes VMs again once healthy."
	case types.HostRecoveryFailed:
		return "retries the VMs left behind every 5 to 30 s while the host stays off, and restarts them on it once it is healthy again."
	case types.HostMaintenance:
		return "nothing: an operator paused it."
	}
	return "nothing yet."
}
