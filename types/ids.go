package types

import (
	"errors"
	"fmt"
	"strings"
	"time"

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

// IncidentID names one death of a host by the moment it was declared, to the millisecond: unlike a counter it
// cannot repeat when a monitor starts afresh (a host re-added to the inventory, a monitor reset or terminated), so
// a new incident never collides with the workflow IDs of an old one.
func IncidentID(declared time.Time) string {
	return declared.UTC().Format("20060102T150405.000Z")
}

// HostRecoveryID is one round of the recovery of one host for one incident: round 1 runs when the host is declared
// dead, later rounds retry the VMs it left behind. ID reuse is refused, so each round runs at most once.
func HostRecoveryID(host, incident string, round int) string {
	return fmt.Sprintf("vmha-recovery-%s-%s-%d", host, incident, round)
}

// RecoverVMID is the recovery of one VM within one round of one host incident.
func RecoverVMID(host, incident string, round int, vmUUID string) string {
	return fmt.Sprintf("vmha-recover-vm-%s-%s-%s-%d", vmUUID, host, incident, round)
}

// StrayCopyID is the resolution of one VM's stray copy on one host: one at a time.
func StrayCopyID(vmUUID, host string) string { return fmt.Sprintf("vmha-stray-%s-%s", vmUUID, host) }

// HAReportID is one count of the cluster's HA VMs; many may run, each under its own ID.
func HAReportID(at time.Time) string {
	return "vmha-ha-report-" + at.UTC().Format("20060102T150405.000000000Z")
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
	StrayCopyWorkflow      = "ResolveStrayCopy"
	HAReportWorkflow       = "HAReport"
)

// Explain is an error for people: vmha's own sentences as they are, but a chain Temporal wrapped (an activity's
// error inside a child workflow's error inside the parent's) replaced by its innermost cause. The Web UI keeps the
// whole chain.
func Explain(err error) string {
	if err == nil {
		return ""
	}
	var wrapper error
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch e.(type) {
		case *temporal.ActivityError, *temporal.ChildWorkflowExecutionError:
			if wrapper == nil {
				wrapper = e
			}
		}
		if errors.Unwrap(e) == nil && wrapper != nil {
			return strings.Replace(err.Error(), wrapper.Error(), e.Error(), 1)
		}
	}
	return err.Error()
}
