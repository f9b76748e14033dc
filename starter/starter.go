// Package starter is the operator's side of vmha: apply the inventory, list hosts and their states, create a VM,
// fail a host over and show recent recoveries. Each command starts or reads Temporal workflows, so everything it
// does is also visible (and doable) in the Temporal Web UI and CLI.
package starter

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"vmha/activities"
	"vmha/types"
	"vmha/workflows"
)

// Starter runs operator commands against one Temporal namespace.
type Starter struct {
	Client client.Client
	Out    io.Writer
}

// Apply makes the running monitors match the inventory and prints what changed.
func (s Starter) Apply(ctx context.Context, inv types.Inventory) (types.ApplyResult, error) {
	var res types.ApplyResult
	if err := s.execute(ctx, types.ApplyInventoryID, types.ApplyInventoryWorkflow, fmt.Sprintf("Apply an inventory of %d hosts", len(inv.Hosts)), inv, &res); err != nil {
		return res, fmt.Errorf("apply inventory (is another apply running?): %w", err)
	}
	fmt.Fprintf(s.Out, "added: %s\nupdated: %s\nunchanged: %s\nremoved: %s\n",
		list(res.Added), list(res.Updated), list(res.Unchanged), list(res.Removed))
	return res, nil
}

// HostRow is one line of `vmha hosts`.
type HostRow struct {
	Name    string
	State   types.HostState
	Since   time.Time
	Address string
}

// HostRows lists every monitored host with its state, from visibility (the same search attributes the Web UI
// filters on).
func (s Starter) HostRows(ctx context.Context) ([]HostRow, error) {
	execs, err := s.list(ctx, activities.RunningMonitors, 10000)
	if err != nil {
		return nil, err
	}
	rows := make([]HostRow, 0, len(execs))
	for _, e := range execs {
		h, err := activities.MonitoredHost(e)
		if err != nil {
			return nil, err
		}
		rows = append(rows, HostRow{Name: h.Spec.Name, State: h.State, Since: h.Since, Address: h.Spec.Address})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows, nil
}

// Hosts prints every monitored host with its state, how many HA VMs the catalog gives it and how many of those are
// down (the HAReport workflow; "?" where nobody can tell, or when no hypervisor worker answered within seconds).
func (s Starter) Hosts(ctx context.Context) ([]HostRow, error) {
	rows, err := s.HostRows(ctx)
	if err != nil {
		return nil, err
	}
	report, rerr := s.haReport(ctx)
	counts := report.ByHost()
	tw := tabwriter.NewWriter(s.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tSINCE\tADDRESS\tHA VMS\tDOWN")
	for _, r := range rows {
		vms, down := "?", "?"
		if c, ok := counts[r.Name]; ok {
			vms = fmt.Sprint(c.VMs)
			if c.Down >= 0 {
				down = fmt.Sprint(c.Down)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, orDash(string(r.State)), since(r.Since), r.Address, vms, down)
	}
	if err := tw.Flush(); err != nil {
		return rows, err
	}
	switch {
	case rerr != nil:
		fmt.Fprintf(s.Out, "HA VM counts unknown: %s\n", types.Explain(rerr))
	case report.Unreadable > 0:
		fmt.Fprintf(s.Out, "%d catalog files could not be read: each may be an HA VM (see the catalog.unreadable events)\n", report.Unreadable)
	}
	return rows, nil
}

// haReport runs HAReport, bounded: `vmha hosts` must answer even when no hypervisor serves the share.
func (s Starter) haReport(ctx context.Context) (types.HAReport, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var report types.HAReport
	run, err := s.Client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: types.HAReportID(time.Now()), TaskQueue: types.ControllerTaskQueue, WorkflowExecutionTimeout: 10 * time.Second,
		StaticSummary: "Count the HA VMs per host and the ones down (vmha hosts)",
	}, types.HAReportWorkflow)
	if err != nil {
		return report, err
	}
	return report, run.Get(ctx, &report)
}

// CreateVM creates an HA VM through the CreateVM workflow and prints where it runs.
func (s Starter) CreateVM(ctx context.Context, req types.CreateVMRequest) (types.VMRecord, error) {
	var rec types.VMRecord
	if err := req.Validate(); err != nil {
		return rec, err
	}
	if err := s.execute(ctx, types.CreateVMID(req.Name), types.CreateVMWorkflow,
		fmt.Sprintf("Create HA VM %s (%d vCPU, %d MiB) from %s", req.Name, req.VCPUs, req.MemoryMiB, req.Image), req, &rec); err != nil {
		return rec, fmt.Errorf("create %s: %w", req.Name, err)
	}
	fmt.Fprintf(s.Out, "VM %s (uuid %s) runs on %s, generation %d\n", rec.Name, rec.UUID, rec.Owner, rec.Generation)
	return rec, nil
}

// Failover fails a host over through the ManualFailover workflow; fence powers a running host off first.
func (s Starter) Failover(ctx context.Context, req types.FailoverRequest) (workflows.FailoverResult, error) {
	var res workflows.FailoverResult
	summary := fmt.Sprintf("Fail %s over on %s's word: %s", req.Host, orDash(req.By), orDash(req.Reason))
	if err := s.execute(ctx, types.ManualFailoverID(req.Host), types.ManualFailoverWorkflow, summary, req, &res); err != nil {
		return res, fmt.Errorf("failover of %s: %w", req.Host, err)
	}
	fenced := "was already off"
	switch {
	case res.Fenced:
		fenced = "was powered off by vmha (BMC confirmed off)"
	case res.ConfirmedOff:
		fenced = fmt.Sprintf("is off on the word of %s (its BMC cannot be asked)", req.By)
	}
	fmt.Fprintf(s.Out, "host %s %s; its monitor %s now recovers its VMs (see `vmha recoveries --host %s`)\n",
		res.Host, fenced, res.Monitor, res.Host)
	return res, nil
}

// execute starts a workflow under its one ID (refused while another run of it is open, so two operators cannot
// race) and waits for its result.
func (s Starter) execute(ctx context.Context, id, workflowType, summary string, in, out interface{}) error {
	run, err := s.Client.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		StaticSummary:                            summary,
		ID:                                       id,
		TaskQueue:                                types.ControllerTaskQueue,
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
	}, workflowType, in)
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Get(ctx, out) }()
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		// Temporal keeps the work until a worker takes it; say why nothing happens yet.
		fmt.Fprintf(s.Out, "waiting for workflow %s: is a controller running (vmha server or vmha controller)?\n", id)
		err = <-done
	}
	if err != nil {
		return fmt.Errorf("workflow %s: %w", id, err)
	}
	return nil
}

// RecoveryRow is one line of `vmha recoveries`.
type RecoveryRow struct {
	WorkflowID string
	Type       string
	Host       string
	Status     string
	Started    time.Time
	Seconds    float64
	Summary    string
}

// Recoveries lists recent host and VM recoveries, newest first, with each finished VM recovery's outcome.
func (s Starter) Recoveries(ctx context.Context, host string, limit int) ([]RecoveryRow, error) {
	query := fmt.Sprintf("WorkflowType IN ('%s', '%s')", types.HostRecoveryWorkflow, types.RecoverVMWorkflow)
	if host != "" {
		query += fmt.Sprintf(" AND %s = '%s'", types.HostAttr.GetName(), host)
	}
	execs, err := s.list(ctx, query, limit)
	if err != nil {
		return nil, err
	}
	var rows []RecoveryRow
	for _, e := range execs {
		row := RecoveryRow{WorkflowID: e.GetExecution().GetWorkflowId(), Type: e.GetType().GetName(),
			Status: strings.ToLower(e.GetStatus().String()), Started: e.GetStartTime().AsTime()}
		decode(e.GetSearchAttributes().GetIndexedFields()[types.HostAttr.GetName()], &row.Host)
		if e.GetCloseTime() != nil {
			row.Seconds = e.GetCloseTime().AsTime().Sub(row.Started).Seconds()
			row.Summary = s.summary(ctx, row)
		}
		rows = append(rows, row)
	}
	tw := tabwriter.NewWriter(s.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STARTED\tTYPE\tHOST\tSTATUS\tSECONDS\tOUTCOME\tWORKFLOW ID")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%s\t%s\n", r.Started.Local().Format(time.DateTime), r.Type, r.Host, r.Status, r.Seconds, r.Summary, r.WorkflowID)
	}
	return rows, tw.Flush()
}

// summary reads a finished recovery's result; it is what an operator wants first: where did the VM go.
func (s Starter) summary(ctx context.Context, r RecoveryRow) string {
	run := s.Client.GetWorkflow(ctx, r.WorkflowID, "")
	switch r.Type {
	case types.RecoverVMWorkflow:
		var o types.VMOutcome
		if err := run.Get(ctx, &o); err != nil {
			return types.Explain(err)
		}
		if o.Recovered {
			return fmt.Sprintf("%s -> %s", o.VM, o.Target)
		}
		return fmt.Sprintf("%s NOT recovered: %s", o.VM, o.Reason)
	default:
		var res types.RecoveryResult
		if err := run.Get(ctx, &res); err != nil {
			return types.Explain(err)
		}
		return res.Summary()
	}
}

func (s Starter) list(ctx context.Context, query string, limit int) ([]*workflowpb.WorkflowExecutionInfo, error) {
	var out []*workflowpb.WorkflowExecutionInfo
	var token []byte
	for {
		resp, err := s.Client.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: query, NextPageToken: token, PageSize: int32(min(limit, 1000))})
		if err != nil {
			return nil, fmt.Errorf("list workflows (%s): %w", query, err)
		}
		out = append(out, resp.GetExecutions()...)
		token = resp.GetNextPageToken()
		if len(token) == 0 || len(out) >= limit {
			return out[:min(len(out), limit)], nil
		}
	}
}

func decode(p *commonpb.Payload, v interface{}) {
	if p != nil {
		_ = converter.GetDefaultDataConverter().FromPayload(p, v)
	}
}

func list(names []string) string {
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func since(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.DateTime), time.Since(t).Round(time.Second))
}

// Maintenance pauses (on) or resumes (off) a host's monitor; nothing is recovered while it is paused.
func (s Starter) Maintenance(ctx context.Context, host string, on bool) error {
	if !types.ValidName(host) {
		return fmt.Errorf("--host %q: not a valid host name", host)
	}
	if err := s.Client.SignalWorkflow(ctx, types.HostMonitorID(host), "", activities.SignalMaintenance, on); err != nil {
		return fmt.Errorf("maintenance of %s: %w", host, err)
	}
	fmt.Fprintf(s.Out, "host %s: maintenance %t\n", host, on)
	return nil
}
