package workflows

import (
	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// Register lists every workflow of vmha under its fixed type name, for the controller worker and for tests.
func Register(r interface {
	RegisterWorkflowWithOptions(w interface{}, options workflow.RegisterOptions)
}) {
	for name, fn := range map[string]interface{}{
		types.HostMonitorWorkflow:    HostMonitor,
		types.HostRecoveryWorkflow:   HostRecovery,
		types.RecoverVMWorkflow:      RecoverVM,
		types.CreateVMWorkflow:       CreateVM,
		types.ManualFailoverWorkflow: ManualFailover,
		types.SchedulerWorkflow:      Scheduler,
		types.ApplyInventoryWorkflow: ApplyInventory,
		types.StrayCopyWorkflow:      ResolveStrayCopy,
		types.HAReportWorkflow:       HAReport,
	} {
		r.RegisterWorkflowWithOptions(fn, workflow.RegisterOptions{Name: name})
	}
}
