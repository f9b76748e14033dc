package starter

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"

	"vmha/activities"
	"vmha/types"
)

// Exit codes of `vmha status`, for scripts.
const (
	StatusAllWell     = 0 // every host watched, nothing needs a person
	StatusNeedsPerson = 1 // something below "NEEDS A PERSON"
	StatusUnavailable = 2 // vmha could not be asked (Temporal unreachable, the monitors cannot be listed)
)

// ExitError ends a command with a given exit code; Err, when set, says why.
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit code %d", e.Code)
	}
	return e.Err.Error()
}

func (e ExitError) Unwrap() error { return e.Err }

// SuspectTooLong is how long a host may stay suspect before `vmha status` (and the VmhaHypervisorWorkerGone alert in
// infra/monitoring) asks for a person: a host that answers and is powered on stays suspect while its worker is gone.
const SuspectTooLong = 5 * time.Minute

// StuckAttempts is the workflow task attempt from which `vmha status` calls a monitor stuck: a worker restarted in
// the middle of a task costs one attempt, while a task the workers cannot complete (after an upgrade, a history the
// new workflow code cannot replay: TMPRL1100) fails every attempt, the SDK retrying it forever, and the host is
// watched by nobody meanwhile.
const StuckAttempts = 3

// statusQueryTimeout bounds the monitors' queries and the HA report together: status answers within seconds even
// when no controller runs.
const statusQueryTimeout = 8 * time.Second

// StatusHost is one host of `vmha status`.
type StatusHost struct {
	HostRow
	// Reason is its last transition's reason; Probe, Cause and the rest come from its monitor's status query
	// (activities.MonitorInput) too.
	Reason      string
	Probe       types.Probe
	Maintenance bool
	Cause       string
	Incident    string
	Round       int
	// VMs and Down are the HA VMs the catalog gives the host and how many of them do not run; -1: nobody can tell.
	VMs, Down int
	// QueryError says why the monitor did not answer its status query.
	QueryError string
	// Stuck is the monitor's workflow task that keeps failing; nil when it makes progress.
	Stuck *StuckTask
}

// StuckTask is a workflow task that failed StuckAttempts attempts or more in a row (DescribeWorkflowExecution's
// pending workflow task), with the failure its history recorded: only the first attempt of a series is recorded,
// the SDK lets later ones time out.
type StuckTask struct {
	Attempt int32
	// Since is when the series began: its recorded failure, else its second attempt.
	Since time.Time
	// Cause and Message are the recorded failure's; Cause is unspecified when every attempt timed out.
	Cause   enumspb.WorkflowTaskFailedCause
	Message string
}

// Explain says why the task fails and what to do, for the monitor of host.
func (t StuckTask) Explain(host string) string {
	var why string
	switch t.Cause {
	case enumspb.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR:
		why = "workflow code cannot replay this monitor's history (" + firstLine(t.Message) + ")"
	case enumspb.WORKFLOW_TASK_FAILED_CAUSE_UNSPECIFIED:
		why = "its workflow task times out on every attempt: a controller takes it and never completes it (a deadlock in the workflow code?)"
		if t.Message != "" {
			why = "its workflow task keeps failing (" + t.Message + ")"
		}
	default:
		why = fmt.Sprintf("its workflow task fails: %s (%s)", t.Cause, firstLine(t.Message))
	}
	return fmt.Sprintf("the monitor of host %s is stuck since %s, workflow task attempt %d: %s, so NOTHING WATCHES %s. %s",
		host, t.Since.Local().Format(time.DateTime), t.Attempt, why, host, rollBack)
}

// nonDeterminism is the code of the Temporal SDK's error for a history the workflow code cannot replay.
const nonDeterminism = "TMPRL1100"

// rollBack is what to do about a monitor the controllers cannot replay.
const rollBack = "Roll back the upgrade of the controllers to the build that ran it, or deploy one that guards the change " +
	"with workflow.GetVersion (docs/production.md, \"Upgrading vmha\")"

// ClusterStatus is everything `vmha status` shows.
type ClusterStatus struct {
	At    time.Time
	Hosts []StatusHost
	// CountsError says why the HA VM counts are unknown (the HAReport workflow failed); Unreadable is how many
	// catalog files could not be read.
	CountsError string
	Unreadable  int
	Recoveries  []RecoveryRow
	// RecoveriesError says why the recent recoveries could not be listed.
	RecoveriesError string
}

// Status gathers the cluster's status, prints it, and returns the exit code; an ExitError when vmha could not be
// asked.
func (s Starter) Status(ctx context.Context, recent int) (ClusterStatus, int, error) {
	st, err := s.ClusterStatus(ctx, recent)
	if err != nil {
		return st, StatusUnavailable, ExitError{Code: StatusUnavailable, Err: err}
	}
	if err := RenderStatus(s.Out, st); err != nil {
		return st, StatusUnavailable, ExitError{Code: StatusUnavailable, Err: fmt.Errorf("print the status: %w", err)}
	}
	return st, StatusCode(st), nil
}

// ClusterStatus asks Temporal for every host (visibility), each monitor (its status query and current details),
// the HA VM counts (HAReport) and the recent recoveries, the last three at once. It fails only when the hosts cannot
// be listed: anything else missing is shown as unknown.
func (s Starter) ClusterStatus(ctx context.Context, recent int) (ClusterStatus, error) {
	st := ClusterStatus{At: time.Now()}
	rows, err := s.HostRows(ctx)
	if err != nil {
		return st, fmt.Errorf("list the host monitors (is Temporal at the address in VMHA_TEMPORAL_ADDRESS running?): %w", err)
	}
	st.Hosts = make([]StatusHost, len(rows))
	for i, r := range rows {
		st.Hosts[i] = StatusHost{HostRow: r, VMs: -1, Down: -1}
	}
	qctx, cancel := context.WithTimeout(ctx, statusQueryTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var report types.HAReport
	var reportErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		report, reportErr = s.haReport(qctx)
	}()
	go func() {
		defer wg.Done()
		quiet := Starter{Client: s.Client, Out: io.Discard}
		rec, err := quiet.Recoveries(qctx, "", recent)
		if err != nil {
			st.RecoveriesError = types.Explain(err)
		}
		st.Recoveries = rec
	}()
	sem := make(chan struct{}, 16)
	for i := range st.Hosts {
		wg.Add(1)
		go func(h *StatusHost) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			s.queryMonitor(qctx, h)
		}(&st.Hosts[i])
	}
	wg.Wait()
	if reportErr != nil {
		st.CountsError = types.Explain(reportErr)
	} else {
		st.Unreadable = report.Unreadable
		counts := report.ByHost()
		for i := range st.Hosts {
			if c, ok := counts[st.Hosts[i].Name]; ok {
				st.Hosts[i].VMs, st.Hosts[i].Down = c.VMs, c.Down
			}
		}
	}
	return st, nil
}

// queryMonitor fills h from its monitor's status query, unless its workflow task is stuck: a query would wait for
// that task until the timeout.
func (s Starter) queryMonitor(ctx context.Context, h *StatusHost) {
	id := types.HostMonitorID(h.Name)
	stuck, err := s.StuckTask(ctx, id)
	if err != nil {
		h.QueryError = types.Explain(err)
		return
	}
	if stuck != nil {
		h.Stuck = stuck
		return
	}
	v, err := s.Client.QueryWorkflow(ctx, id, "", activities.QueryStatus)
	var m activities.MonitorInput
	if err == nil {
		err = v.Get(&m)
	}
	if err != nil {
		h.QueryError = types.Explain(err)
		return
	}
	h.Reason, h.Probe, h.Maintenance = m.Reason, m.Last, m.Maintenance
	h.Cause, h.Incident, h.Round = m.Cause, m.Incident, m.Round
}

// StuckTask returns the workflow's pending workflow task when it has failed StuckAttempts attempts or more, with
// the failure recorded in its history; nil when it makes progress.
func (s Starter) StuckTask(ctx context.Context, workflowID string) (*StuckTask, error) {
	d, err := s.Client.DescribeWorkflowExecution(ctx, workflowID, "")
	if err != nil {
		return nil, fmt.Errorf("describe %s: %w", workflowID, err)
	}
	p := d.GetPendingWorkflowTask()
	if p.GetAttempt() < StuckAttempts {
		return nil, nil
	}
	// The attempts after the recorded failure are transient: OriginalScheduledTime is the second attempt's.
	t := &StuckTask{Attempt: p.GetAttempt(), Since: p.GetOriginalScheduledTime().AsTime()}
	it := s.Client.GetWorkflowHistory(ctx, workflowID, d.GetWorkflowExecutionInfo().GetExecution().GetRunId(), false,
		enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var failed *historypb.HistoryEvent
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			// Stuck it is all the same; only the reason is missing.
			t.Message = fmt.Sprintf("its history could not be read: %v", err)
			return t, nil
		}
		switch e.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_FAILED:
			failed = e
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			// A failure some task recovered from is not this series'.
			failed = nil
		}
	}
	if failed != nil {
		a := failed.GetWorkflowTaskFailedEventAttributes()
		t.Since, t.Cause, t.Message = failed.GetEventTime().AsTime(), a.GetCause(), a.GetFailure().GetMessage()
	}
	return t, nil
}

// Why is the one-line reason shown for a host: its last transition's reason, else how it was declared dead and what
// the last probe saw.
func (h StatusHost) Why() string {
	switch {
	case h.Stuck != nil:
		return fmt.Sprintf("? the monitor is stuck (workflow task attempt %d): nothing watches this host", h.Stuck.Attempt)
	case h.QueryError != "":
		return "? the monitor did not answer: " + h.QueryError
	case h.Reason != "":
		return firstLine(h.Reason)
	}
	probe := "last probe: " + DescribeProbe(h.Probe)
	if h.Cause != "" && h.State.ConfirmedOff() {
		return fmt.Sprintf("declared dead: %s (incident %s, round %d); %s", h.Cause, orDash(h.Incident), h.Round, probe)
	}
	return probe
}

// DescribeProbe says in words what one probe saw: network, power, worker, storage heartbeat, and its errors.
func DescribeProbe(p types.Probe) string {
	if p.At.IsZero() {
		return "none yet"
	}
	parts := []string{"network " + orDash(string(p.Reach))}
	switch p.Power {
	case "":
		parts = append(parts, "power not confirmed")
	case types.PowerUnreachable:
		parts = append(parts, "BMC unreachable")
	case types.PowerAuthFailed:
		parts = append(parts, "BMC refused the credentials")
	default:
		parts = append(parts, "power "+string(p.Power))
	}
	if p.WorkerAlive {
		parts = append(parts, "worker polls")
	} else {
		parts = append(parts, "worker gone")
	}
	if p.Heartbeat != types.HeartbeatUnknown {
		parts = append(parts, "storage heartbeat "+string(p.Heartbeat))
	}
	out := strings.Join(parts, ", ")
	if d := strings.TrimSpace(p.Detail); d != "" {
		out += " (" + firstLine(d) + ")"
	}
	return out
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// Attention lists what needs a person, one sentence each with what to do; empty when all is well.
func Attention(st ClusterStatus) []string {
	var out []string
	if len(st.Hosts) == 0 {
		out = append(out, "no host is monitored: register them with `vmha apply -f hosts.yaml`")
	}
	var unanswered []string
	for _, h := range st.Hosts {
		when := "since " + ago(h.Since, st.At)
		switch h.State {
		case types.HostIsolated:
			out = append(out, fmt.Sprintf("host %s is isolated %s: it does not answer but its BMC says power on, so vmha moves nothing. "+
				"Restore its network, or fence it: vmha failover --host %s --fence", h.Name, when, h.Name))
		case types.HostUnknown:
			out = append(out, fmt.Sprintf("host %s is unknown %s: it does not answer and its BMC cannot be asked. "+
				"Make sure it is off, then: vmha failover --host %s --confirm-powered-off --reason TEXT", h.Name, when, h.Name))
		case types.HostHung:
			out = append(out, fmt.Sprintf("host %s is hung %s: power on, storage heartbeat stopped; vmha fences it unless VMHA_FENCE_HUNG=false. "+
				"If it stays hung: vmha failover --host %s --fence", h.Name, when, h.Name))
		case types.HostStorageLost:
			out = append(out, fmt.Sprintf("host %s lost the shared storage %s: check its mount of the share "+
				"(vmha fences it only with VMHA_FENCE_STORAGE_LOST=true)", h.Name, when))
		case types.HostRecoveryFailed:
			out = append(out, fmt.Sprintf("host %s is recovery-failed %s: some of its HA VMs run nowhere; vmha keeps retrying. "+
				"Why: vmha recoveries --host %s", h.Name, when, h.Name))
		case types.HostSuspect:
			if !h.Since.IsZero() && st.At.Sub(h.Since) >= SuspectTooLong {
				out = append(out, fmt.Sprintf("host %s is suspect %s, more than %s: is its vmha hypervisor worker running? (last probe: %s)",
					h.Name, when, SuspectTooLong, DescribeProbe(h.Probe)))
			}
		}
		if h.Down > 0 && h.State != types.HostRecoveryFailed {
			out = append(out, fmt.Sprintf("%d of the %d HA VMs of host %s are down", h.Down, h.VMs, h.Name))
		} else if h.Down > 0 {
			out = append(out, fmt.Sprintf("%d of the %d HA VMs of host %s run nowhere", h.Down, h.VMs, h.Name))
		}
		if h.Stuck != nil {
			out = append(out, h.Stuck.Explain(h.Name))
		}
		switch {
		case strings.Contains(h.QueryError, nonDeterminism):
			// The controllers replayed the history to answer, and their code cannot: the monitor stalls at its next
			// workflow task, which may well be its host's death.
			out = append(out, fmt.Sprintf("the monitor of host %s cannot be replayed by the controllers' workflow code (%s): "+
				"it stalls at its next workflow task, and from then on NOTHING WATCHES %s. %s", h.Name, firstLine(h.QueryError), h.Name, rollBack))
		case h.QueryError != "":
			unanswered = append(unanswered, h.Name)
		}
	}
	if len(unanswered) > 0 {
		out = append(out, fmt.Sprintf("the monitors of %s did not answer (is a controller running: vmha server or vmha controller?)",
			strings.Join(unanswered, ", ")))
	}
	if st.CountsError != "" {
		out = append(out, "HA VM counts unknown, no hypervisor worker answered for the catalog: "+st.CountsError)
	}
	if st.Unreadable > 0 {
		out = append(out, fmt.Sprintf("%d catalog files could not be read: each may be an HA VM left down "+
			"(the catalog.unreadable events name them; fix or remove them)", st.Unreadable))
	}
	return out
}

// StatusCode is the exit code for st: StatusNeedsPerson when anything needs a person, else StatusAllWell.
func StatusCode(st ClusterStatus) int {
	if len(Attention(st)) > 0 {
		return StatusNeedsPerson
	}
	return StatusAllWell
}

// RenderStatus prints st on one screen: a verdict, the hosts, the recent recoveries, and what needs a person.
func RenderStatus(w io.Writer, st ClusterStatus) error {
	attention := Attention(st)
	vms, down := 0, 0
	counted := st.CountsError == ""
	for _, h := range st.Hosts {
		if h.VMs < 0 {
			counted = false
			continue
		}
		vms += h.VMs
		if h.Down > 0 {
			down += h.Down
		}
		if h.Down < 0 {
			counted = false
		}
	}
	vmText := fmt.Sprintf("%d HA VMs, %d down", vms, down)
	if !counted {
		vmText += " (some hosts cannot tell)"
	}
	verdict := "all well"
	if len(attention) > 0 {
		verdict = fmt.Sprintf("%d %s a person (below)", len(attention), plural(len(attention), "thing needs", "things need"))
	}
	fmt.Fprintf(w, "vmha status at %s: %s. %d %s, %s.\n\n", st.At.Local().Format(time.DateTime), verdict,
		len(st.Hosts), plural(len(st.Hosts), "host", "hosts"), vmText)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATE\tSINCE\tHA VMS\tDOWN\tWHY")
	for _, h := range st.Hosts {
		state := orDash(string(h.State))
		if h.Maintenance && h.State != types.HostMaintenance {
			state += " (maintenance)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", h.Name, state, ago(h.Since, st.At), count(h.VMs), count(h.Down), h.Why())
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nRECENT RECOVERIES (newest first; vmha recoveries shows more)")
	switch {
	case st.RecoveriesError != "":
		fmt.Fprintf(w, "  could not be listed: %s\n", st.RecoveriesError)
	case len(st.Recoveries) == 0:
		fmt.Fprintln(w, "  none")
	default:
		rows := append([]RecoveryRow(nil), st.Recoveries...)
		sort.SliceStable(rows, func(i, j int) bool { return rows[i].Started.After(rows[j].Started) })
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "STARTED\tHOST\tTYPE\tTOOK\tOUTCOME")
		for _, r := range rows {
			took, outcome := fmt.Sprintf("%.1f s", r.Seconds), r.Summary
			if r.Status == "running" {
				took, outcome = "running", "-"
			} else if outcome == "" {
				outcome = r.Status
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Started.Local().Format(time.DateTime), orDash(r.Host), r.Type, took, outcome)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if len(attention) == 0 {
		_, err := fmt.Fprintln(w, "\nNothing needs a person.")
		return err
	}
	fmt.Fprintln(w, "\nNEEDS A PERSON")
	for _, a := range attention {
		fmt.Fprintf(w, "  - %s\n", a)
	}
	return nil
}

func count(n int) string {
	if n < 0 {
		return "?"
	}
	return fmt.Sprint(n)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// ago is since() against a fixed now, so that a status renders the same for tests.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.DateTime), now.Sub(t).Round(time.Second))
}
