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
	// The settings, the host's HA VMs and the list of hosts do not depend on each other: all three are asked at once.
	policyRead, listingRead := askPolicy(ctx), haVMsOf(ctx, in.Host)
	var hostsRead workflow.Future
	if !in.OnOwner {
		hostsRead = listHosts(ctx)
	}
	var policy types.Policy
	if err := policyRead.Get(ctx, &policy); err != nil {
		return res, fmt.Errorf("read the recovery settings: %w", err)
	}
	var listing types.VMListing
	if err := listingRead.Get(ctx, &listing); err != nil {
		return res, fmt.Errorf("list HA VMs of %s: %w", in.Host, err)
	}
	types.SortByPriority(listing.VMs)
	res.Unreadable = listing.Unreadable
	unreadable := reportUnreadable(ctx, in.Host, listing.Unreadable)
	var candidates []types.Candidate
	if hostsRead != nil && len(listing.VMs) > 0 {
		var err error
		if candidates, err = withStats(ctx, hostsRead, in.Host); err != nil {
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
	err := askPolicy(ctx).Get(ctx, &p)
	return p, err
}

// askPolicy starts reading the settings (a types.Policy) without waiting for them.
func askPolicy(ctx workflow.Context) workflow.Future {
	return workflow.ExecuteActivity(says(controllerOptions(ctx), "read the recovery settings"), controller.LoadPolicy)
}

// haVMsOf lists the HA VMs the catalog gives to the host (a types.VMListing).
func haVMsOf(ctx workflow.Context, host string) workflow.Future {
	return workflow.ExecuteActivity(says(shareOptions(ctx), "list the HA VMs the catalog gives to %s", host), onShare.ListVMs, host)
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

// clusterSnapshot lists the hosts and asks every healthy one (but the failed one) for its stats.
func clusterSnapshot(ctx workflow.Context, failed string) ([]types.Candidate, error) {
	return withStats(ctx, listHosts(ctx), failed)
}

// listHosts lists the hosts and their states (a []types.Candidate).
func listHosts(ctx workflow.Context) workflow.Future {
	return workflow.ExecuteActivity(says(controllerOptions(ctx), "list the hosts and their states"), controller.ListHosts)
}

// withStats waits for the host list and asks every healthy host (but the failed one) for its stats, all at once.
// A host that does not answer within seconds simply has no stats, which keeps it out of placement.
func withStats(ctx workflow.Context, hostsRead workflow.Future, failed string) ([]types.Candidate, error) {
	var hosts []types.Candidate
	if err := hostsRead.Get(ctx, &hosts); err != nil {
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
