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

// HostRecovery brings a dead host's HA VMs back: read the ones the catalog still gives to the host and recover
// them in priority order, a bounded number at a time, each in its own RecoverVM child, which asks the Scheduler
// for a target (the Scheduler looks at the cluster itself, so nothing here grows with the number of hosts). A VM
// that cannot be recovered is reported with the reason; it does not stop the others. Catalog files that cannot be
// read are reported too: each may be a VM left down.
func HostRecovery(ctx workflow.Context, in HostRecoveryInput) (types.RecoveryResult, error) {
	res := types.RecoveryResult{Host: in.Host, Incident: in.Incident, Round: in.Round}
	looks := workflow.GetVersion(ctx, changeSchedulerLooks, workflow.DefaultVersion, 1)
	// The settings and the host's HA VMs do not depend on each other: both are asked at once (and, in a run begun
	// before changeSchedulerLooks, the hosts with their stats too).
	policyRead, listingRead := askPolicy(ctx), haVMsOf(ctx, in.Host)
	var snapshot *hostSnapshot
	if !in.OnOwner && looks == workflow.DefaultVersion {
		snapshot = askSnapshot(ctx, in.Host)
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
	if snapshot != nil {
		var err error
		if candidates, err = snapshot.get(ctx); err != nil {
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

// clusterSnapshot lists the hosts and asks every healthy one (but the failed one) for its stats: for the HA
// report, and for recoveries and creations begun before changeSchedulerLooks.
func clusterSnapshot(ctx workflow.Context, failed string) ([]types.Candidate, error) {
	return askSnapshot(ctx, failed).get(ctx)
}

// hostSnapshot is a look at the cluster under way: the host list, then every healthy host's stats.
type hostSnapshot struct {
	hosts []types.Candidate
	err   error
	stats []workflow.Future
}

// askSnapshot lists the hosts and, as soon as the list is in, asks every healthy host (but the failed one) whose
// storage heartbeat carried no fresh stats for them, all at once, without waiting for them.
func askSnapshot(ctx workflow.Context, failed string) *hostSnapshot {
	s := &hostSnapshot{}
	if s.err = workflow.ExecuteActivity(says(controllerOptions(ctx), "list the hosts and their states"), controller.ListHosts).Get(ctx, &s.hosts); s.err != nil {
		s.err = fmt.Errorf("list hosts: %w", s.err)
		return s
	}
	s.stats = make([]workflow.Future, len(s.hosts))
	for i, h := range s.hosts {
		// Stats the host's storage heartbeat carried (fresh, see Controller.ListHosts) need no asking.
		if h.Spec.Name != failed && h.State == types.HostHealthy && h.Stats.SampledAt.IsZero() {
			s.stats[i] = workflow.ExecuteActivity(says(statsOptions(ctx, h.Spec.Name), "load and free memory of %s", h.Spec.Name), onHost.HostStats)
		}
	}
	return s
}

// get waits for the stats. A host that does not answer within seconds simply has no stats, which keeps it out of
// placement.
func (s *hostSnapshot) get(ctx workflow.Context) ([]types.Candidate, error) {
	if s.err != nil {
		return nil, s.err
	}
	for i, f := range s.stats {
		if f == nil {
			continue
		}
		if err := f.Get(ctx, &s.hosts[i].Stats); err != nil {
			workflow.GetLogger(ctx).Warn("no stats", "host", s.hosts[i].Spec.Name, "error", err)
		}
	}
	return s.hosts, nil
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
