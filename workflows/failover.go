package workflows

import (
	"fmt"
	"strings"

	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

// FailoverResult says what the manual failover did before handing the host to its monitor's recovery.
type FailoverResult struct {
	Host string `json:"host"`
	// PowerBefore is what the BMC said before anything was done.
	PowerBefore types.PowerState `json:"powerBefore"`
	// Fenced is true when vmha powered the host off and the BMC confirmed it.
	Fenced bool `json:"fenced"`
	// ConfirmedOff is true when the BMC could not be asked and an operator confirmed the host is off.
	ConfirmedOff bool `json:"confirmedOff,omitempty"`
	// Monitor is the workflow that now runs the recovery (filter the Web UI by VmhaHost to see it).
	Monitor string `json:"monitor"`
}

// ManualFailover moves a host's VMs away on an operator's word. A host whose power is on may still run its VMs,
// so it is failed over only with Fence: vmha then powers it off hard and waits until the BMC reports off before
// any VM starts elsewhere. A host already off is failed over at once. The host's monitor runs the recovery, so a
// manual failover and a detected death can never recover the same VMs twice.
func ManualFailover(ctx workflow.Context, req types.FailoverRequest) (FailoverResult, error) {
	res := FailoverResult{Host: req.Host, Monitor: types.HostMonitorID(req.Host)}
	if !types.ValidName(req.Host) {
		return res, badInput(fmt.Errorf("host %q: not a valid host name", req.Host))
	}
	if req.ConfirmPoweredOff && (strings.TrimSpace(req.Reason) == "" || strings.TrimSpace(req.By) == "") {
		return res, badInput(fmt.Errorf("confirmPoweredOff: reason %q and by %q must both be set: they stay in the history", req.Reason, req.By))
	}
	host, err := describeHost(ctx, req.Host)
	if err != nil {
		return res, err
	}
	if host.State == types.HostDead || host.State == types.HostRecovering {
		return res, badInput(fmt.Errorf("host %s: already %s, its recovery runs in %s", req.Host, host.State, res.Monitor))
	}
	if res.PowerBefore, err = confirmedPower(ctx, host.Spec); err != nil {
		return res, err
	}
	switch res.PowerBefore {
	case types.PowerOff, types.PowerFault:
		// Already off: nothing to fence (a BMC may even refuse "off" when off).
	case types.PowerOn:
		if !req.Fence {
			return res, badInput(fmt.Errorf("host %s: power is on, its VMs may be running: set fence=true to power it off first", req.Host))
		}
		if err := fence(ctx, host.Spec); err != nil {
			return res, err
		}
		res.Fenced = true
	default:
		if !req.ConfirmPoweredOff {
			return res, badInput(fmt.Errorf("host %s: BMC %s, so vmha cannot make sure the host is off: fix the BMC, or make sure "+
				"the host is off and confirm it (confirmPoweredOff, with a reason)", req.Host, res.PowerBefore))
		}
		res.ConfirmedOff = true
	}
	return res, handOver(ctx, req)
}

// describeHost finds the host's monitor: only inventoried hosts can fail over.
func describeHost(ctx workflow.Context, host string) (types.Candidate, error) {
	var c types.Candidate
	err := workflow.ExecuteActivity(says(controllerOptions(ctx), "how is %s?", host), controller.DescribeHost, host).Get(ctx, &c)
	return c, err
}

// fence is a hard power-off, done only when the BMC reports the chassis off: a command that returned proves nothing.
func fence(ctx workflow.Context, spec types.HostSpec) error {
	policy, err := loadPolicy(ctx)
	if err != nil {
		return err
	}
	return fenceWith(ctx, spec, policy)
}

func fenceWith(ctx workflow.Context, spec types.HostSpec, policy types.Policy) error {
	fctx := fenceOptions(ctx, policy.FenceTimeout)
	if err := workflow.ExecuteActivity(says(fctx, "fence %s: hard power-off through its BMC", spec.Name), controller.PowerOff, spec).Get(ctx, nil); err != nil {
		return fmt.Errorf("power off %s: %w", spec.Name, err)
	}
	if err := workflow.ExecuteActivity(says(fctx, "wait until %s's BMC says off", spec.Name), controller.WaitPowerOff, spec).Get(ctx, nil); err != nil {
		return fmt.Errorf("confirm %s is off: %w", spec.Name, err)
	}
	return nil
}

// handOver tells the host's monitor that the host is off by vmha's doing: it declares the host dead and recovers.
func handOver(ctx workflow.Context, req types.FailoverRequest) error {
	info := workflow.GetInfo(ctx)
	notice := activities.FenceNotice{By: info.WorkflowExecution.ID, Reason: req.Reason, Began: info.WorkflowStartTime}
	if req.ConfirmPoweredOff {
		notice.ConfirmedOffBy = req.By
	}
	if err := workflow.SignalExternalWorkflow(ctx, types.HostMonitorID(req.Host), "", activities.SignalFenced, notice).Get(ctx, nil); err != nil {
		return fmt.Errorf("hand %s over to its monitor: %w", req.Host, err)
	}
	return nil
}
