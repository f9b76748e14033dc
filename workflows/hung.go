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
	why := fmt.Sprintf("%s: unreachable (%s), power %s, storage heartbeat %s", m.State, m.Last.Reach, m.Last.Power, m.Last.Heartbeat)
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
	return fmt.Sprintf("unreachable (%s) and power %s", p.Reach, p.Power)
}

// bmcUnusable is a BMC that gave no answer vmha can act on.
func bmcUnusable(p types.PowerState) bool {
	return p == types.PowerUnreachable || p == types.PowerAuthFailed
}
