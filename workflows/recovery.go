package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// HostRecoveryInput opens the recovery of one incident of one host.
type HostRecoveryInput struct {
	Host       string    `json:"host"`
	Incident   int       `json:"incident"`
	Cause      string    `json:"cause"`
	DeclaredAt time.Time `json:"declaredAt"`
}

// HostRecovery brings a dead host's HA VMs back elsewhere: read them from the catalog, take one look at the
// cluster, and recover them in priority order, a bounded number at a time, each in its own RecoverVM child.
// A VM that cannot be recovered is reported with the reason; it does not stop the others.
func HostRecovery(ctx workflow.Context, in HostRecoveryInput) (types.RecoveryResult, error) {
	res := types.RecoveryResult{Host: in.Host, Incident: in.Incident}
	policy, err := loadPolicy(ctx)
	if err != nil {
		return res, err
	}
	vms, err := haVMsOf(ctx, in.Host)
	if err != nil {
		return res, err
	}
	candidates, err := clusterSnapshot(ctx, in.Host)
	if err != nil {
		return res, err
	}
	res.Outcomes = recoverAll(ctx, in, vms, candidates, policy)
	event := types.Event{Host: in.Host, WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID}
	awaitAll(ctx, notify(ctx, event, types.EventHostRecoveryDone, res.Summary()))
	return res, nil
}

// loadPolicy reads the controller's recovery and placement settings once; history keeps them for replays.
func loadPolicy(ctx workflow.Context) (types.Policy, error) {
	var p types.Policy
	err := workflow.ExecuteActivity(controllerOptions(ctx), controller.LoadPolicy).Get(ctx, &p)
	return p, err
}

// haVMsOf lists the host's HA VMs from the catalog, highest priority first.
func haVMsOf(ctx workflow.Context, host string) ([]types.VMRecord, error) {
	var vms []types.VMRecord
	if err := workflow.ExecuteActivity(shareOptions(ctx), onShare.ListVMs, host).Get(ctx, &vms); err != nil {
		return nil, fmt.Errorf("list HA VMs of %s: %w", host, err)
	}
	types.SortByPriority(vms)
	return vms, nil
}

// clusterSnapshot lists the hosts and asks every healthy one (but the failed one) for its stats, all at once.
// A host that does not answer within seconds simply has no stats, which keeps it out of placement.
func clusterSnapshot(ctx workflow.Context, failed string) ([]types.Candidate, error) {
	var hosts []types.Candidate
	if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.ListHosts).Get(ctx, &hosts); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	stats := make([]workflow.Future, len(hosts))
	for i, h := range hosts {
		if h.Spec.Name != failed && h.State == types.HostHealthy {
			stats[i] = workflow.ExecuteActivity(statsOptions(ctx, h.Spec.Name), onHost.HostStats)
		}
	}
	for i, f := range stats {
		if f == nil {
			continue
		}
		if err := f.Get(ctx, &hosts[i].Stats); err != nil {
			workflow.GetLogger(ctx).Warn("no stats", "host", hosts[i].Spec.Name, "error", err)
		}
	}
	return hosts, nil
}

// recoverAll runs one RecoverVM child per VM in priority order, at most RecoveryConcurrency at a time.
func recoverAll(ctx workflow.Context, in HostRecoveryInput, vms []types.VMRecord, candidates []types.Candidate, policy types.Policy) []types.VMOutcome {
	outcomes := make([]types.VMOutcome, len(vms))
	sel := workflow.NewSelector(ctx)
	running, next := 0, 0
	for next < len(vms) || running > 0 {
		for running < max(policy.RecoveryConcurrency, 1) && next < len(vms) {
			i, vm := next, vms[next]
			next++
			running++
			id := types.RecoverVMID(in.Host, in.Incident, vm.UUID)
			child := workflow.ExecuteChildWorkflow(childOptions(ctx, id, in.Host), RecoverVM, RecoverVMInput{
				FailedHost: in.Host, Incident: in.Incident, VM: vm, Candidates: candidates, Policy: policy,
			})
			sel.AddFuture(child, func(f workflow.Future) {
				running--
				if err := f.Get(ctx, &outcomes[i]); err != nil {
					outcomes[i] = types.VMOutcome{VM: vm.Name, UUID: vm.UUID, Reason: err.Error()}
				}
			})
		}
		sel.Select(ctx)
	}
	return outcomes
}
