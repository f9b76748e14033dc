package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// HostRecoveryInput opens one recovery round of one incident of one host.
type HostRecoveryInput struct {
	Host       string    `json:"host"`
	Incident   string    `json:"incident"`
	Round      int       `json:"round"`
	Cause      string    `json:"cause"`
	DeclaredAt time.Time `json:"declaredAt"`
	// OnOwner restarts the VMs the catalog still gives to the host on the host itself: it is healthy again.
	OnOwner bool `json:"onOwner,omitempty"`
}

// HostRecovery brings a dead host's HA VMs back: read the ones the catalog still gives to the host, take one look
// at the cluster, and recover them in priority order, a bounded number at a time, each in its own RecoverVM
// child. A VM that cannot be recovered is reported with the reason; it does not stop the others. Catalog files
// that cannot be read are reported too: each may be a VM left down.
func HostRecovery(ctx workflow.Context, in HostRecoveryInput) (types.RecoveryResult, error) {
	res := types.RecoveryResult{Host: in.Host, Incident: in.Incident, Round: in.Round}
	policy, err := loadPolicy(ctx)
	if err != nil {
		return res, err
	}
	listing, err := haVMsOf(ctx, in.Host)
	if err != nil {
		return res, err
	}
	res.Unreadable = listing.Unreadable
	unreadable := reportUnreadable(ctx, in.Host, listing.Unreadable)
	var candidates []types.Candidate
	if !in.OnOwner && len(listing.VMs) > 0 {
		if candidates, err = clusterSnapshot(ctx, in.Host); err != nil {
			return res, err
		}
	}
	res.Outcomes = recoverAll(ctx, in, listing.VMs, candidates, policy)
	event := types.Event{Host: in.Host, WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID,
		Seconds: workflow.Now(ctx).Sub(in.DeclaredAt).Seconds()}
	awaitAll(ctx, append(unreadable, notify(ctx, event, types.EventHostRecoveryDone, res.Summary()))...)
	return res, nil
}

// loadPolicy reads the controller's recovery and placement settings once; history keeps them for replays.
func loadPolicy(ctx workflow.Context) (types.Policy, error) {
	var p types.Policy
	err := workflow.ExecuteActivity(says(controllerOptions(ctx), "read the recovery settings"), controller.LoadPolicy).Get(ctx, &p)
	return p, err
}

// haVMsOf lists the HA VMs the catalog gives to the host, highest priority first.
func haVMsOf(ctx workflow.Context, host string) (types.VMListing, error) {
	var listing types.VMListing
	if err := workflow.ExecuteActivity(says(shareOptions(ctx), "list the HA VMs the catalog gives to %s", host), onShare.ListVMs, host).Get(ctx, &listing); err != nil {
		return listing, fmt.Errorf("list HA VMs of %s: %w", host, err)
	}
	types.SortByPriority(listing.VMs)
	return listing, nil
}

// reportUnreadable tells users, at error level, about each catalog file the recovery could not read.
func reportUnreadable(ctx workflow.Context, host string, files []types.UnreadableEntry) []workflow.Future {
	var fs []workflow.Future
	for _, u := range files {
		e := types.Event{Host: host, WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID}
		fs = append(fs, notify(ctx, e, types.EventCatalogUnreadable, fmt.Sprintf("%s: %s", u.File, u.Reason)))
	}
	return fs
}

// clusterSnapshot lists the hosts and asks every healthy one (but the failed one) for its stats, all at once.
// A host that does not answer within seconds simply has no stats, which keeps it out of placement.
func clusterSnapshot(ctx workflow.Context, failed string) ([]types.Candidate, error) {
	var hosts []types.Candidate
	if err := workflow.ExecuteActivity(says(controllerOptions(ctx), "list the hosts and their states"), controller.ListHosts).Get(ctx, &hosts); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	stats := make([]workflow.Future, len(hosts))
	for i, h := range hosts {
		if h.Spec.Name != failed && h.State == types.HostHealthy {
			stats[i] = workflow.ExecuteActivity(says(statsOptions(ctx, h.Spec.Name), "load and free memory of %s", h.Spec.Name), onHost.HostStats)
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
			id := types.RecoverVMID(in.Host, in.Incident, in.Round, vm.UUID)
			summary := fmt.Sprintf("Recover %s (%d MiB, priority %d) of %s", vm.Name, vm.MemoryMiB, vm.Policy.Priority, in.Host)
			child := workflow.ExecuteChildWorkflow(childOptions(ctx, id, in.Host, summary, "VM "+vm.UUID+", catalog generation "+fmt.Sprint(vm.Generation)), RecoverVM, RecoverVMInput{
				FailedHost: in.Host, Incident: in.Incident, Round: in.Round, VM: vm, Candidates: candidates,
				Policy: policy, OnOwner: in.OnOwner,
			})
			sel.AddFuture(child, func(f workflow.Future) {
				running--
				if err := f.Get(ctx, &outcomes[i]); err != nil {
					outcomes[i] = types.VMOutcome{VM: vm.Name, UUID: vm.UUID, Reason: types.Explain(err)}
				}
			})
		}
		sel.Select(ctx)
	}
	return outcomes
}
