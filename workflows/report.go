package workflows

import (
	"fmt"
	"slices"
	"sort"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// HAReport counts, for each monitored host, the HA VMs the catalog gives it and how many of them do not run: an
// on-call engineer's first question. A host confirmed off runs none of its VMs; a healthy host says which run; any
// other host cannot tell.
func HAReport(ctx workflow.Context) (types.HAReport, error) {
	var listing types.VMListing
	if err := workflow.ExecuteActivity(says(shareOptions(ctx), "list every HA VM of the catalog"), onShare.ListVMs, "").Get(ctx, &listing); err != nil {
		return types.HAReport{}, fmt.Errorf("list HA VMs: %w", err)
	}
	hosts, err := clusterSnapshot(ctx, "")
	if err != nil {
		return types.HAReport{}, err
	}
	report := types.HAReport{Unreadable: len(listing.Unreadable)}
	for _, h := range hosts {
		row := types.HostVMs{Host: h.Spec.Name}
		for _, vm := range listing.VMs {
			if vm.Owner != h.Spec.Name {
				continue
			}
			row.VMs++
			switch {
			case h.State.ConfirmedOff():
				row.Down++
			case h.State == types.HostHealthy && !h.Stats.SampledAt.IsZero():
				if !slices.Contains(h.Stats.Running, vm.UUID) {
					row.Down++
				}
			default:
				row.Down = -1
			}
			if row.Down < 0 {
				break
			}
		}
		report.Hosts = append(report.Hosts, row)
	}
	sort.Slice(report.Hosts, func(i, j int) bool { return report.Hosts[i].Host < report.Hosts[j].Host })
	return report, nil
}
