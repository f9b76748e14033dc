package workers

import (
	"context"
	"fmt"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"vmha/types"
)

// strayReporter hands a stray copy to the ResolveStrayCopy workflow, one per VM and host at a time: the keeper
// reports it at every check while it runs, and a running resolution takes the report.
type strayReporter struct{ c client.Client }

func (r strayReporter) ReportStray(ctx context.Context, s types.StrayCopy) error {
	_, err := r.c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		StaticSummary:            fmt.Sprintf("%s runs on %s, but the catalog gives it to %s", s.VM, s.Host, s.Owner),
		ID:                       types.StrayCopyID(s.UUID, s.Host),
		TaskQueue:                types.ControllerTaskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		TypedSearchAttributes:    temporal.NewSearchAttributes(types.HostAttr.ValueSet(s.Host)),
	}, types.StrayCopyWorkflow, s)
	if err != nil {
		return fmt.Errorf("report stray copy of %s on %s: %w", s.VM, s.Host, err)
	}
	return nil
}
