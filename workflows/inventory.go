package workflows

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// ApplyInventory makes the running monitors match the inventory: start a monitor for each new host, hand a changed
// entry to its running monitor, retire the monitors of hosts no longer listed. Everything is checked first
// (fields, duplicates, that the controller can read every BMC secret, and that no host to retire still owns HA
// VMs in the catalog), so a bad file changes nothing.
//
// The changes run in order: starts and updates first, retirements last. When a step fails, the steps done before
// it are undone in reverse order (a monitor it started is retired, an updated monitor gets its old spec back) and
// the apply fails with the first error. A retirement is not undone (a retired monitor's state is gone; listing
// the host again starts a fresh one): the error names the hosts already retired. If an undo step fails too, the
// error says which hosts were left as changed, so nothing is silently left half-applied.
func ApplyInventory(ctx workflow.Context, inv types.Inventory) (types.ApplyResult, error) {
	var res types.ApplyResult
	// Validate reads the labels map in sorted order: deterministic.
	//workflowcheck:ignore
	if err := inv.Validate(); err != nil {
		return res, badInput(err)
	}
	if err := workflow.ExecuteActivity(says(controllerOptions(ctx), "can the controller read every BMC secret?"), controller.CheckSecrets, inv.Hosts).Get(ctx, nil); err != nil {
		return res, err
	}
	running, err := monitoredHosts(ctx)
	if err != nil {
		return res, err
	}
	// Each change with its undo: an added host's monitor is retired again, an updated one gets its old spec.
	var changes []undoStep
	for _, spec := range inv.Hosts {
		old, known := running[spec.Name]
		delete(running, spec.Name)
		switch {
		// reflect.DeepEqual of two values is deterministic.
		//workflowcheck:ignore
		case known && old.Equal(spec):
			res.Unchanged = append(res.Unchanged, spec.Name)
			continue
		case known:
			res.Updated = append(res.Updated, spec.Name)
			changes = append(changes, undoStep{spec: spec, old: &old})
		default:
			res.Added = append(res.Added, spec.Name)
			changes = append(changes, undoStep{spec: spec})
		}
	}
	retire := slices.Sorted(maps.Keys(running)) //workflowcheck:ignore
	if len(retire) > 0 {
		if err := checkNoVMsOwned(ctx, retire); err != nil {
			return types.ApplyResult{}, err
		}
	}

	var undo []undoStep
	fail := func(step error) (types.ApplyResult, error) {
		return types.ApplyResult{}, errors.Join(step, compensate(ctx, undo))
	}
	for _, c := range changes {
		if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.UpsertMonitor, c.spec).Get(ctx, nil); err != nil {
			// An upsert that failed may still have reached the monitor: undo it as well (both undos are idempotent).
			undo = append(undo, c)
			return fail(fmt.Errorf("monitor %s: %w", c.spec.Name, err))
		}
		undo = append(undo, c)
	}
	var retired []string
	for _, name := range retire {
		if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.RetireMonitor, name).Get(ctx, nil); err != nil {
			step := fmt.Errorf("retire %s: %w", name, err)
			if len(retired) > 0 {
				step = fmt.Errorf("%w (already retired, not undone: %s; list them again to watch them)", step, strings.Join(retired, ", "))
			}
			return fail(step)
		}
		retired = append(retired, name)
		res.Removed = append(res.Removed, name)
	}
	return res, nil
}

// undoStep is one change of an apply and how to take it back: old is the spec the monitor ran with before, nil
// for a monitor the apply started.
type undoStep struct {
	spec types.HostSpec
	old  *types.HostSpec
}

// compensate takes the changes back, last first. It returns nil when everything was undone ("nothing changed"),
// else an error naming each host left changed and why, with what to do.
func compensate(ctx workflow.Context, undo []undoStep) error {
	var errs []error
	for i := len(undo) - 1; i >= 0; i-- {
		u := undo[i]
		var err error
		if u.old != nil {
			err = workflow.ExecuteActivity(controllerOptions(ctx), controller.UpsertMonitor, *u.old).Get(ctx, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("undo failed: monitor %s still has the new spec (apply the old inventory again): %w", u.spec.Name, err))
			}
			continue
		}
		err = workflow.ExecuteActivity(controllerOptions(ctx), controller.RetireMonitor, u.spec.Name).Get(ctx, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("undo failed: monitor %s started by this apply still runs (apply the old inventory again): %w", u.spec.Name, err))
		}
	}
	if len(errs) == 0 && len(undo) > 0 {
		workflow.GetLogger(ctx).Info("inventory apply failed; every change was undone", "changes", len(undo))
	}
	return errors.Join(errs...)
}

// checkNoVMsOwned refuses to retire a host that still owns HA VMs in the catalog: its entries would be orphaned,
// never recovered (a renamed host, say). The operator fails the host over or moves its VMs first.
func checkNoVMsOwned(ctx workflow.Context, retire []string) error {
	var listing types.VMListing
	if err := workflow.ExecuteActivity(shareOptions(ctx), onShare.ListVMs, "").Get(ctx, &listing); err != nil {
		return fmt.Errorf("read the catalog to check that no host to retire (%s) still owns HA VMs: %w", strings.Join(retire, ", "), err)
	}
	owned := map[string][]string{}
	for _, vm := range listing.VMs {
		owned[vm.Owner] = append(owned[vm.Owner], vm.Name)
	}
	var problems []string
	for _, host := range retire {
		if vms := owned[host]; len(vms) > 0 {
			sort.Strings(vms)
			problems = append(problems, fmt.Sprintf("host %s still owns HA VMs %s", host, strings.Join(vms, ", ")))
		}
	}
	if len(problems) == 0 && len(listing.Unreadable) > 0 {
		// An entry that cannot be read may belong to a host about to be retired.
		var files []string
		for _, u := range listing.Unreadable {
			files = append(files, fmt.Sprintf("%s (%s)", u.File, u.Reason))
		}
		problems = append(problems, fmt.Sprintf("the catalog has unreadable entries that may belong to %s: %s; repair or remove them first",
			strings.Join(retire, ", "), strings.Join(files, "; ")))
	}
	if len(problems) > 0 {
		return badInput(fmt.Errorf("nothing changed: %s; a host leaves the inventory only when it owns no HA VMs: "+
			"fail it over (vmha failover) or move its VMs first (renaming a host is retiring it and adding another)",
			strings.Join(problems, "; ")))
	}
	return nil
}

// monitoredHosts maps each running monitor's host to the spec it watches with.
func monitoredHosts(ctx workflow.Context) (map[string]types.HostSpec, error) {
	var hosts []types.Candidate
	if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.ListHosts).Get(ctx, &hosts); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	specs := make(map[string]types.HostSpec, len(hosts))
	for _, h := range hosts {
		specs[h.Spec.Name] = h.Spec
	}
	return specs, nil
}
