package workflows

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

const (
	// maxTargets bounds how many hosts one VM is tried on before it is reported unrecoverable.
	maxTargets = 5
	// maxRefreshes bounds how often a VM with no eligible target takes a fresh look at the cluster.
	maxRefreshes = 2
	refreshWait  = 2 * time.Second
)

// RecoverVMInput is one VM of a dead host, as the catalog listed it. Its size does not depend on the cluster's:
// the Scheduler looks at the hosts itself.
type RecoverVMInput struct {
	FailedHost string         `json:"failedHost"`
	Incident   string         `json:"incident"`
	Round      int            `json:"round"`
	VM         types.VMRecord `json:"vm"`
	// Candidates is the cluster as it looked when the round began, in runs that release fd09219 started
	// (changeSchedulerLooks); empty since.
	Candidates []types.Candidate `json:"candidates,omitempty"`
	Policy     types.Policy      `json:"policy"`
	// OnOwner restarts the VM on the failed host itself, which is healthy again.
	OnOwner bool `json:"onOwner,omitempty"`
}

// RecoverVM restarts one VM elsewhere, following the ownership protocol (README, "Who owns a VM"): settle a claim an
// earlier attempt left, then for each target in the scheduler's order claim the VM for it (compare-and-swap in the
// catalog, before anything is defined), define it there from the catalog's XML, start it, confirm it runs, and
// commit. Every host step carries the claim as a fencing token. When a step fails, the VM is removed from that
// target and the claim released, and the next target is tried; when the removal fails too, a copy may run there,
// so the VM is tried nowhere else. Its workflow ID is unique per round of an incident.
func RecoverVM(ctx workflow.Context, in RecoverVMInput) (types.VMOutcome, error) {
	start := workflow.Now(ctx)
	id := workflow.GetInfo(ctx).WorkflowExecution.ID
	event := types.Event{Host: in.FailedHost, VM: in.VM.Name, VMUUID: in.VM.UUID, WorkflowID: id}
	started := notify(ctx, event, types.EventRecoveryStarted, "")

	outcome := types.VMOutcome{VM: in.VM.Name, UUID: in.VM.UUID}
	r := &restart{vm: in.VM.Name, from: in.FailedHost, tok: in.VM.Token()}
	settledOn, err := r.settle(ctx, in.VM)
	switch {
	case err != nil:
	case settledOn != "":
		outcome.Target, outcome.Attempts = settledOn, 1
	case in.OnOwner:
		outcome.Target, outcome.Attempts = in.FailedHost, 1
		if err = r.attempt(ctx, in.FailedHost); err != nil {
			// The owner's own copy is never removed: the claim goes back, the VM stays its.
			err = errors.Join(err, r.release(ctx))
		}
	default:
		p := placer{vm: in.VM, failedHost: in.FailedHost, candidates: in.Candidates, policy: in.Policy,
			reservationPrefix: id, undo: r.undo}
		var tried attempts
		tried, err = p.run(ctx, r.attempt)
		outcome.Target, outcome.Attempts = tried.Target, tried.Count
	}
	var done workflow.Future
	if err != nil {
		outcome.Target, outcome.Reason = "", types.Explain(err)
		done = notify(ctx, event, types.EventRecoveryFailed, outcome.Reason)
	} else {
		outcome.Recovered = true
		event.Target = outcome.Target
		event.Seconds = workflow.Now(ctx).Sub(start).Seconds()
		done = notify(ctx, event, types.EventRecoveryDone, "")
	}
	// Activities of a closed workflow never run: wait for both notifications before returning.
	awaitAll(ctx, started, done)
	return outcome, nil
}

// restart is one VM's way through the ownership protocol: the version it is recovered from, and the claim of the
// attempt in progress.
type restart struct {
	vm    string
	from  string
	tok   types.Ownership
	claim *types.Ownership
}

// settle ends a claim that an earlier attempt on another host left (its clean-up failed, or the round was cut
// short). If that host answers that the VM runs there, the claim is committed: the VM is recovered where it runs,
// with no second start. Otherwise its copy is removed, unless the host is confirmed off, and the VM goes back to the
// failed host. It returns the host the VM was committed to, if it was.
func (r *restart) settle(ctx workflow.Context, vm types.VMRecord) (string, error) {
	if vm.Phase != types.PhaseStarting || vm.Owner == r.from {
		return "", nil
	}
	holder := vm.Owner
	r.claim = &types.Ownership{UUID: vm.UUID, Owner: holder, Generation: vm.Generation}
	if state, err := domainState(ctx, holder, vm.UUID); err == nil && state == types.DomainRunning {
		_, err := commitOn(ctx, holder, vm.Name, *r.claim)
		if err == nil {
			return holder, nil
		}
		workflow.GetLogger(ctx).Warn("commit of a running claimed copy failed: removing it instead", "vm", vm.Name, "host", holder, "error", err)
	}
	if !hostIsOff(ctx, holder) {
		if err := removeFrom(ctx, holder, *r.claim); err != nil {
			return "", fmt.Errorf("an earlier attempt on %s left a claim whose copy could not be removed (%s): not started elsewhere",
				holder, types.Explain(err))
		}
	}
	return "", r.release(ctx)
}

// attempt claims the VM for host, defines it there from the catalog, starts it, confirms it runs and commits.
func (r *restart) attempt(ctx workflow.Context, host string) error {
	hctx := hostOptions(ctx, host)
	// Until the claim answers, it may have landed: a clean-up must treat it as taken.
	r.claim = &types.Ownership{UUID: r.tok.UUID, Owner: host, Generation: r.tok.Generation + 1}
	if err := workflow.ExecuteActivity(says(hctx, "claim %s for %s (from %s, generation %d)", r.vm, host, r.tok.Owner, r.tok.Generation),
		onHost.Claim, r.tok).Get(ctx, nil); err != nil {
		if isMoved(err) {
			// A definite no: nothing was claimed, so nothing is to be cleaned up.
			r.claim = nil
		}
		return fmt.Errorf("claim on %s: %w", host, err)
	}
	if err := workflow.ExecuteActivity(says(hctx, "define %s on %s from the catalog", r.vm, host), onHost.DefineFromCatalog, *r.claim).Get(ctx, nil); err != nil {
		return fmt.Errorf("define on %s: %w", host, err)
	}
	if err := startAndConfirm(ctx, host, r.vm, *r.claim); err != nil {
		return err
	}
	_, err := commitOn(ctx, host, r.vm, *r.claim)
	return err
}

// commitOn ends a claim on host: the VM runs there and is owned there.
func commitOn(ctx workflow.Context, host, vm string, claim types.Ownership) (types.VMRecord, error) {
	var rec types.VMRecord
	if err := workflow.ExecuteActivity(says(hostOptions(ctx, host), "%s runs on %s: commit it there", vm, host),
		onHost.CommitOwnership, claim).Get(ctx, &rec); err != nil {
		return rec, fmt.Errorf("commit ownership to %s: %w", host, err)
	}
	return rec, nil
}

// undo is the compensation of a failed attempt: remove the VM from the target, then release the claim so the next
// target can take it. An error means a copy may remain there.
func (r *restart) undo(ctx workflow.Context, host string) error {
	if r.claim == nil {
		return nil
	}
	if err := removeFrom(ctx, host, *r.claim); err != nil {
		return err
	}
	return r.release(ctx)
}

// release gives the claim back to the failed host, one generation later, and recovers from that version next.
func (r *restart) release(ctx workflow.Context) error {
	if r.claim == nil {
		return nil
	}
	var back types.Ownership
	if err := workflow.ExecuteActivity(says(shareOptions(ctx), "give %s back to %s: %s's claim is settled", r.vm, r.from, r.claim.Owner),
		onShare.ReleaseClaim, *r.claim, r.from).Get(ctx, &back); err != nil {
		return fmt.Errorf("release the claim of %s back to %s: %w", r.claim.Owner, r.from, err)
	}
	r.tok, r.claim = back, nil
	return nil
}

// hostIsOff is true when the host's monitor has confirmed it off and it has not come back.
func hostIsOff(ctx workflow.Context, host string) bool {
	c, err := describeHost(ctx, host)
	return err == nil && c.State.ConfirmedOff()
}

// startAndConfirm starts a defined VM on host and waits until libvirt reports it running: a started domain that
// QEMU quits right after is not a recovered VM.
func startAndConfirm(ctx workflow.Context, host, vm string, tok types.Ownership) error {
	hctx := hostOptions(ctx, host)
	if err := workflow.ExecuteActivity(says(hctx, "start %s on %s", vm, host), onHost.StartDomain, tok).Get(ctx, nil); err != nil {
		return fmt.Errorf("start on %s: %w", host, err)
	}
	if err := workflow.ExecuteActivity(says(hctx, "confirm %s runs on %s", vm, host), onHost.WaitRunning, tok.UUID).Get(ctx, nil); err != nil {
		return fmt.Errorf("confirm running on %s: %w", host, err)
	}
	return nil
}

// placer tries targets for one VM in the scheduler's order until one works. It serves both recovery and creation.
type placer struct {
	vm         types.VMRecord
	failedHost string
	// candidates is the snapshot of a run begun before changeSchedulerLooks; nil, the scheduler looks itself, at
	// the cluster as it was after freshAfter.
	candidates        []types.Candidate
	freshAfter        time.Time
	policy            types.Policy
	reservationPrefix string
	// undo removes what a failed attempt left on a target (the compensation). An error of type Committed means the attempt
	// succeeded after all.
	undo func(ctx workflow.Context, host string) error
}

// attempts is what a placer did: the target that worked and how many targets it tried.
type attempts struct {
	Target string
	Count  int
}

// run asks the scheduler for a target, runs attempt there, and on failure removes the VM from that target
// (compensation), excludes it and backs off before the next. A compensation that fails ends the run: the attempt
// may have started the VM there, and another target would run a second copy.
func (p placer) run(ctx workflow.Context, attempt func(workflow.Context, string) error) (attempts, error) {
	var exclude []string
	var failures []string
	backoff := 200 * time.Millisecond
	refreshes := 0
	for n := 1; n <= maxTargets; n++ {
		resID := fmt.Sprintf("%s-%d-%d", p.reservationPrefix, n, refreshes)
		placement, err := p.place(ctx, resID, exclude)
		if err != nil {
			return attempts{Count: n - 1}, err
		}
		if placement.Host == "" && refreshes < maxRefreshes {
			// The snapshot may be older than VMs placed meanwhile by other recoveries: look again before giving up.
			refreshes++
			n--
			_ = workflow.Sleep(ctx, refreshWait)
			if workflow.GetVersion(ctx, changeSchedulerLooks, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
				if fresh, err := clusterSnapshot(ctx, p.failedHost); err == nil {
					p.candidates = fresh
				}
			} else {
				// The scheduler looks at the cluster again for this VM, even in a run that began with a snapshot.
				p.candidates, p.freshAfter = nil, workflow.Now(ctx)
			}
			continue
		}
		if placement.Host == "" {
			// The map is read in sorted order: deterministic.
			return attempts{Count: n - 1}, noTarget(placement, failures) //workflowcheck:ignore
		}
		err = attempt(ctx, placement.Host)
		if err == nil {
			p.release(ctx, resID, true)
			return attempts{Target: placement.Host, Count: n}, nil
		}
		failures = append(failures, fmt.Sprintf("%s: %s", placement.Host, types.Explain(err)))
		workflow.GetLogger(ctx).Warn("attempt failed, compensating", "vm", p.vm.Name, "target", placement.Host, "error", err)
		if uerr := p.undo(ctx, placement.Host); isCommitted(uerr) {
			p.release(ctx, resID, true)
			return attempts{Target: placement.Host, Count: n}, nil
		} else if uerr != nil {
			p.release(ctx, resID, false)
			return attempts{Count: n}, fmt.Errorf(
				"attempt on %s failed (%s) and its clean-up failed too (%s): a copy may remain there, so no other host is tried",
				placement.Host, types.Explain(err), types.Explain(uerr))
		}
		p.release(ctx, resID, false)
		if isMoved(err) {
			return attempts{Count: n}, err
		}
		exclude = append(exclude, placement.Host)
		_ = workflow.Sleep(ctx, backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
	return attempts{Count: maxTargets}, fmt.Errorf("no target worked after %d attempts: %s", maxTargets, strings.Join(failures, "; "))
}

func (p placer) place(ctx workflow.Context, resID string, exclude []string) (types.Placement, error) {
	req := types.PlacementRequest{ReservationID: resID, VM: p.vm, FailedHost: p.failedHost, Exclude: exclude,
		Candidates: p.candidates, FreshAfter: p.freshAfter, Policy: p.policy}
	var placement types.Placement
	if err := workflow.ExecuteActivity(says(controllerOptions(ctx), "choose a host for %s (%d MiB, %d vCPU)", p.vm.Name, p.vm.MemoryMiB, p.vm.VCPUs),
		controller.Place, req).Get(ctx, &placement); err != nil {
		return placement, fmt.Errorf("place %s: %w", p.vm.Name, err)
	}
	return placement, nil
}

// release returns a reservation; a failure only delays reuse of that capacity until the scheduler expires it.
func (p placer) release(ctx workflow.Context, resID string, started bool) {
	req := activities.ReleaseRequest{ReservationID: resID, Started: started}
	if err := workflow.ExecuteActivity(says(controllerOptions(ctx), "end the reservation %s", resID), controller.Release, req).Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Warn("release reservation", "reservation", resID, "error", err)
	}
}

// removeFrom removes a half-recovered VM from a target. Its failure is reported to the caller: the VM may be
// running there.
func removeFrom(ctx workflow.Context, host string, tok types.Ownership) error {
	if err := workflow.ExecuteActivity(says(hostOptions(ctx, host), "remove the failed attempt's copy from %s", host), onHost.RemoveDomain, tok).Get(ctx, nil); err != nil {
		if !isCommitted(err) {
			workflow.GetLogger(ctx).Error("compensation failed: a copy may remain on the target", "target", host, "vm_uuid", tok.UUID, "error", err)
		}
		return err
	}
	return nil
}

// isMoved is the catalog telling that the VM was already recovered or changed hands: trying elsewhere would
// start a second copy.
func isMoved(err error) bool { return hasType(err, types.ErrTypeMoved) }

// isCommitted is a compensation refused because the VM is committed to its target: the attempt worked.
func isCommitted(err error) bool { return hasType(err, types.ErrTypeCommitted) }

func hasType(err error, typ string) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr) && appErr.Type() == typ
}

// noTarget names why the hosts the answer names were rejected, in host order, and counts the others by reason.
func noTarget(p types.Placement, failures []string) error {
	reasons := make([]string, 0, len(p.Rejected)+len(failures)+1)
	for _, h := range slices.Sorted(maps.Keys(p.Rejected)) {
		reasons = append(reasons, fmt.Sprintf("%s: %s", h, p.Rejected[h]))
	}
	total := 0
	var kinds []string
	for _, k := range slices.Sorted(maps.Keys(p.RejectedBy)) {
		total += p.RejectedBy[k]
		kinds = append(kinds, fmt.Sprintf("%d %s", p.RejectedBy[k], k))
	}
	if total > len(p.Rejected) {
		reasons = append(reasons, fmt.Sprintf("%d hosts rejected in all: %s", total, strings.Join(kinds, ", ")))
	}
	reasons = append(reasons, failures...)
	return fmt.Errorf("no eligible target (%s)", strings.Join(reasons, "; "))
}

// awaitAll waits for notifications; one that could not be delivered is logged, not a failure of the runbook.
func awaitAll(ctx workflow.Context, fs ...workflow.Future) {
	for _, f := range fs {
		if err := f.Get(ctx, nil); err != nil {
			workflow.GetLogger(ctx).Warn("notification not delivered", "error", err)
		}
	}
}

// notify sends an event without waiting: users hear about it at once and the recovery does not wait for them.
func notify(ctx workflow.Context, e types.Event, kind types.EventKind, reason string) workflow.Future {
	e.Kind, e.Reason, e.At = kind, reason, workflow.Now(ctx)
	return workflow.ExecuteActivity(says(notifyOptions(ctx), "tell users: %s %s %s %s", e.Kind, e.Host, e.VM, e.Reason), controller.Notify, e)
}
