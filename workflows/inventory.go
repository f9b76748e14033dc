package workflows

import (
	"fmt"
	"reflect"
	"sort"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// ApplyInventory makes the running monitors match the inventory: start a monitor for each new host, hand a changed
// entry to its running monitor, retire the monitors of hosts no longer listed. Everything is checked first
// (fields, duplicates, and that the controller can read every BMC secret), so a bad file changes nothing.
func ApplyInventory(ctx workflow.Context, inv types.Inventory) (types.ApplyResult, error) {
	var res types.ApplyResult
	if err := inv.Validate(); err != nil {
		return res, badInput(err)
	}
	if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.CheckSecrets, inv.Hosts).Get(ctx, nil); err != nil {
		return res, err
	}
	running, err := monitoredHosts(ctx)
	if err != nil {
		return res, err
	}
	for _, spec := range inv.Hosts {
		old, known := running[spec.Name]
		delete(running, spec.Name)
		switch {
		case known && reflect.DeepEqual(old, spec):
			res.Unchanged = append(res.Unchanged, spec.Name)
			continue
		case known:
			res.Updated = append(res.Updated, spec.Name)
		default:
			res.Added = append(res.Added, spec.Name)
		}
		if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.UpsertMonitor, spec).Get(ctx, nil); err != nil {
			return res, fmt.Errorf("monitor %s: %w", spec.Name, err)
		}
	}
	for _, name := range sortedKeys(running) {
		if err := workflow.ExecuteActivity(controllerOptions(ctx), controller.RetireMonitor, name).Get(ctx, nil); err != nil {
			return res, fmt.Errorf("retire %s: %w", name, err)
		}
		res.Removed = append(res.Removed, name)
	}
	return res, nil
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

func sortedKeys(m map[string]types.HostSpec) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
