package types

import (
	"fmt"

	"go.temporal.io/sdk/temporal"
)

// Task queues. Each hypervisor worker polls its host's queue (libvirt calls that must run on that host) and the
// share queue (catalog reads any live host can serve, since every host mounts the share at the same path).
const (
	ControllerTaskQueue = "vmha-controller"
	ShareTaskQueue      = "vmha-share"
	// WatchTaskQueue carries the long-running host watches, one per host, on workers sized for them, so they can
	// never take the slots a recovery's own steps need.
	WatchTaskQueue = "vmha-watch"
)

// HostTaskQueue is the queue only the named host's hypervisor worker polls.
func HostTaskQueue(host string) string { return "vmha-host-" + host }

// Workflow IDs: one helper per kind, so that a duplicate start is refused by Temporal instead of running twice.

// SchedulerWorkflowID is the one workflow that serialises placements across concurrent recoveries.
const SchedulerWorkflowID = "vmha-scheduler"

// HostMonitorID is the perpetual monitor of one host.
func HostMonitorID(host string) string { return "vmha-monitor-" + host }

// HostRecoveryID is the recovery of one host for one incident; the incident number makes it at-most-once.
func HostRecoveryID(host string, incident int) string {
	return fmt.Sprintf("vmha-recovery-%s-%d", host, incident)
}

// RecoverVMID is the recovery of one VM within one host incident.
func RecoverVMID(host string, incident int, vmUUID string) string {
	return fmt.Sprintf("vmha-recover-vm-%s-%s-%d", vmUUID, host, incident)
}

// CreateVMID is the creation of a VM; names are unique, so is this ID.
func CreateVMID(name string) string { return "vmha-create-vm-" + name }

// ApplyInventoryID is one inventory apply; only one runs at a time.
const ApplyInventoryID = "vmha-apply-inventory"

// ManualFailoverID is an operator's failover of a host.
func ManualFailoverID(host string) string { return "vmha-failover-" + host }

// Search attributes: registered at server creation (embedded) or by `temporal operator search-attribute create`.
var (
	// HostAttr names the host a workflow is about: filter the Web UI with VmhaHost="hv1".
	HostAttr = temporal.NewSearchAttributeKeyKeyword("VmhaHost")
	// HostStateAttr is a monitor's current state: VmhaHostState="isolated".
	HostStateAttr = temporal.NewSearchAttributeKeyKeyword("VmhaHostState")
	// HostStateSinceAttr is when that state was entered.
	HostStateSinceAttr = temporal.NewSearchAttributeKeyTime("VmhaHostStateSince")
)

// Workflow type names, fixed so operators can type them on the Temporal CLI.
const (
	HostMonitorWorkflow    = "HostMonitor"
	HostRecoveryWorkflow   = "HostRecovery"
	RecoverVMWorkflow      = "RecoverVM"
	CreateVMWorkflow       = "CreateVM"
	ManualFailoverWorkflow = "ManualFailover"
	SchedulerWorkflow      = "Scheduler"
	ApplyInventoryWorkflow = "ApplyInventory"
)
