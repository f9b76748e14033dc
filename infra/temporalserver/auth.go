package temporalserver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/server/common/api"
	"go.temporal.io/server/common/authorization"

	"vmha/activities"
	"vmha/infra/certs"
	"vmha/types"
)

// authType is the principal type of every caller: the frontend knows them by their client certificate only.
const authType = "mtls"

// caller is what the claim mapper read from a client certificate: who it names, or why it names nobody.
type caller struct {
	subject string
	id      certs.Identity
	err     error
}

// claimMapper turns a verified client certificate into claims carrying the caller (Claims.Extensions); the
// authorizer decides on it alone. The server role also gets Temporal's system admin claim, which the server's own
// components may look for.
type claimMapper struct{}

func (claimMapper) GetClaims(info *authorization.AuthInfo) (*authorization.Claims, error) {
	if info.TLSSubject == nil {
		return &authorization.Claims{AuthType: authType, Extensions: caller{err: fmt.Errorf("no client certificate")}}, nil
	}
	id, err := certs.IdentityOf(*info.TLSSubject)
	claims := &authorization.Claims{Subject: info.TLSSubject.String(), AuthType: authType,
		Extensions: caller{subject: info.TLSSubject.String(), id: id, err: err}}
	if err == nil && id.Role == certs.RoleServer {
		claims.System = authorization.RoleAdmin
	}
	return claims, nil
}

// operatorWorkflow tells the workflows the operator commands start, all run by the controller's worker: apply,
// create-vm and failover (the HA report of hosts and status has rules of its own, see reportStart).
func operatorWorkflow(name string) bool {
	switch name {
	case types.ApplyInventoryWorkflow, types.CreateVMWorkflow, types.ManualFailoverWorkflow:
		return true
	}
	return false
}

// authorizer decides every frontend call by the caller's role (see certs.Role):
//   - server: everything (the server's own components, the embedded Web UI and controller);
//   - controller: everything in vmha's namespace, and cluster-wide reads;
//   - operator: reads, the operator workflows (operatorWorkflow) on the controller's queue, and the maintenance
//     signal to a host monitor (`vmha maintenance` signals it directly); never a poll: it cannot act as a worker;
//   - viewer: reads, and the HA report `vmha hosts` and `vmha status` start (reportStart);
//   - hypervisor: what its worker does and nothing else (hypervisorCall).
//
// Every denial is logged at warn level with the caller's subject, role and the API.
type authorizer struct {
	namespace string
	// tasks finds the queue of the activity a hypervisor answers (activityQueues).
	tasks  taskQueueFinder
	logger *slog.Logger
}

// taskQueueFinder tells the queue of the pending activity a task token names ("" when none is pending).
type taskQueueFinder interface {
	queueOf(ctx context.Context, namespace string, token []byte) (string, error)
}

func (a *authorizer) Authorize(ctx context.Context, claims *authorization.Claims, target *authorization.CallTarget) (authorization.Result, error) {
	// Health checks and GetSystemInfo, which every SDK client calls when it connects; the TLS handshake already
	// verified the caller's certificate.
	if authorization.IsHealthCheckAPI(target.APIName) {
		return authorization.Result{Decision: authorization.DecisionAllow}, nil
	}
	var c caller
	if claims != nil {
		c, _ = claims.Extensions.(caller)
	} else {
		c.err = fmt.Errorf("no client certificate")
	}
	reason := a.decide(ctx, c, target)
	if reason == "" {
		return authorization.Result{Decision: authorization.DecisionAllow, Principal: &commonpb.Principal{Type: authType, Name: c.subject}}, nil
	}
	a.logger.Warn("temporal call denied", "subject", c.subject, "role", string(c.id.Role), "name", c.id.Name,
		"api", target.APIName, "namespace", target.Namespace, "reason", reason)
	return authorization.Result{Decision: authorization.DecisionDeny, Reason: reason}, nil
}

// decide returns why the call is denied, or "" when it is allowed.
func (a *authorizer) decide(ctx context.Context, c caller, target *authorization.CallTarget) string {
	if c.err != nil {
		return c.err.Error()
	}
	if c.id.Role == certs.RoleServer {
		return ""
	}
	method := api.MethodName(target.APIName)
	meta := api.GetMethodMetadata(target.APIName)
	switch meta.Scope {
	case api.ScopeCluster:
		if meta.Access == api.AccessReadOnly && c.id.Role != certs.RoleHypervisor {
			return ""
		}
		return fmt.Sprintf("role %s may not call %s (cluster administration is the server's)", c.id.Role, method)
	case api.ScopeNamespace:
		if target.Namespace != a.namespace {
			return fmt.Sprintf("role %s acts in namespace %s only, not %q", c.id.Role, a.namespace, target.Namespace)
		}
	default:
		return fmt.Sprintf("role %s may not call %s", c.id.Role, target.APIName)
	}
	readOnly := meta.Access == api.AccessReadOnly
	switch c.id.Role {
	case certs.RoleController:
		return ""
	case certs.RoleViewer:
		if readOnly {
			return ""
		}
		if req, ok := target.Request.(*workflowservice.StartWorkflowExecutionRequest); ok {
			return reportStart(c.id.Role, req)
		}
	case certs.RoleOperator:
		if readOnly {
			return ""
		}
		return operatorCall(method, target.Request)
	case certs.RoleHypervisor:
		return a.hypervisorCall(ctx, c.id.Name, method, target.Request)
	}
	return fmt.Sprintf("role %s may not call %s", c.id.Role, method)
}

// operatorCall allows the writes of the operator commands. Fencing and moving VMs stay the controller's: the
// operator only asks for them through ManualFailover, which the controller runs.
func operatorCall(method string, request any) string {
	switch req := request.(type) {
	case *workflowservice.StartWorkflowExecutionRequest:
		wt := req.GetWorkflowType().GetName()
		if wt == types.HAReportWorkflow {
			return reportStart(certs.RoleOperator, req)
		}
		if !operatorWorkflow(wt) {
			return fmt.Sprintf("role operator may not start %s (only %s, %s, %s and %s)", wt, types.ApplyInventoryWorkflow,
				types.CreateVMWorkflow, types.ManualFailoverWorkflow, types.HAReportWorkflow)
		}
		if q := req.GetTaskQueue().GetName(); q != types.ControllerTaskQueue {
			return fmt.Sprintf("role operator starts workflows on task queue %s only, not %s", types.ControllerTaskQueue, q)
		}
		return ""
	case *workflowservice.SignalWorkflowExecutionRequest:
		// `vmha maintenance` signals the monitor directly; every other signal of a monitor is the controller's.
		if req.GetSignalName() == activities.SignalMaintenance &&
			strings.HasPrefix(req.GetWorkflowExecution().GetWorkflowId(), types.HostMonitorID("")) {
			return ""
		}
		return fmt.Sprintf("role operator may send only the %s signal to a host monitor, not %q to %s", activities.SignalMaintenance,
			req.GetSignalName(), req.GetWorkflowExecution().GetWorkflowId())
	}
	return fmt.Sprintf("role operator may not call %s", method)
}

// hypervisorCall allows what a hypervisor worker does (workers.RunHypervisor): describe the namespace and its own
// task queue at start, poll its own queue and the share queue, heartbeat and answer the activity tasks of those
// queues, record and end its worker's heartbeats, and report a stray copy on itself (ResolveStrayCopy for its own
// host).
func (a *authorizer) hypervisorCall(ctx context.Context, host, method string, request any) string {
	own := types.HostTaskQueue(host)
	ownOrShare := func(q string) bool { return q == own || q == types.ShareTaskQueue }
	switch req := request.(type) {
	case *workflowservice.DescribeNamespaceRequest:
		return ""
	case *workflowservice.DescribeTaskQueueRequest:
		if req.GetTaskQueue().GetName() == own {
			return ""
		}
		return fmt.Sprintf("hypervisor %s may describe task queue %s only, not %s", host, own, req.GetTaskQueue().GetName())
	case *workflowservice.PollActivityTaskQueueRequest:
		if ownOrShare(req.GetTaskQueue().GetName()) {
			return ""
		}
		return fmt.Sprintf("hypervisor %s may poll %s and %s only, not %s", host, own, types.ShareTaskQueue, req.GetTaskQueue().GetName())
	case *workflowservice.RecordActivityTaskHeartbeatRequest, *workflowservice.RespondActivityTaskCompletedRequest,
		*workflowservice.RespondActivityTaskFailedRequest, *workflowservice.RespondActivityTaskCanceledRequest:
		// By task token, as the SDK answers the tasks its polls got (the by-ID variants are not allowed), and only
		// for an activity of its own queues: see activityQueues.
		q, err := a.tasks.queueOf(ctx, a.namespace, req.(interface{ GetTaskToken() []byte }).GetTaskToken())
		if err != nil {
			return fmt.Sprintf("hypervisor %s answers a task token that cannot be checked: %v", host, err)
		}
		if q != "" && !ownOrShare(q) {
			return fmt.Sprintf("hypervisor %s may answer tasks of %s and %s only, not of %s", host, own, types.ShareTaskQueue, q)
		}
		return ""
	case *workflowservice.RecordWorkerHeartbeatRequest:
		for _, hb := range req.GetWorkerHeartbeat() {
			if !ownOrShare(hb.GetTaskQueue()) {
				return fmt.Sprintf("hypervisor %s may record worker heartbeats of %s and %s only, not %s", host, own, types.ShareTaskQueue, hb.GetTaskQueue())
			}
		}
		return ""
	case *workflowservice.ShutdownWorkerRequest:
		if ownOrShare(req.GetTaskQueue()) && req.GetStickyTaskQueue() == "" {
			return ""
		}
		return fmt.Sprintf("hypervisor %s may shut down its own workers only, not task queue %q (sticky %q)", host, req.GetTaskQueue(), req.GetStickyTaskQueue())
	case *workflowservice.StartWorkflowExecutionRequest:
		return strayReport(host, req)
	}
	return fmt.Sprintf("role hypervisor may not call %s", method)
}

// strayReport allows a hypervisor's keeper to report a stray copy of a VM on its own host, as workers.strayReporter
// does, and nothing else: the workflow destroys a copy only where it runs, on the host that reported it.
func strayReport(host string, req *workflowservice.StartWorkflowExecutionRequest) string {
	deny := fmt.Sprintf("hypervisor %s may start only %s for a stray copy on itself (workflow %s, type %s, task queue %s)",
		host, types.StrayCopyWorkflow, req.GetWorkflowId(), req.GetWorkflowType().GetName(), req.GetTaskQueue().GetName())
	if req.GetWorkflowType().GetName() != types.StrayCopyWorkflow || req.GetTaskQueue().GetName() != types.ControllerTaskQueue {
		return deny
	}
	payloads := req.GetInput().GetPayloads()
	if len(payloads) != 1 {
		return deny
	}
	var s types.StrayCopy
	if err := json.Unmarshal(payloads[0].GetData(), &s); err != nil || s.Host != host || req.GetWorkflowId() != types.StrayCopyID(s.UUID, host) {
		return deny
	}
	return ""
}

// maxReportTimeout bounds the run of a report a reader starts: the report takes seconds (starter.Starter gives it
// 10 s), and a longer bound would let a reader keep workflows running on the controller.
const maxReportTimeout = time.Minute

// reportStart allows the start of an HA report (the HAReport workflow) as `vmha hosts` and `vmha status` make it
// (starter.Starter.haReport), and nothing more. The report only reads (the catalog, through a hypervisor's worker,
// and the monitors' states) and returns counts, so viewers may run it; what a reader must not do through it is take
// another workflow's ID (a monitor not started yet), run it with input, on a schedule, later or without a time
// bound, take its workflow task as a worker (eager start), have the server call elsewhere when it ends, replace a
// running workflow, or mark it with search attributes the Web UI and vmha filter on.
func reportStart(role certs.Role, req *workflowservice.StartWorkflowExecutionRequest) string {
	why := ""
	timeout := req.GetWorkflowExecutionTimeout().AsDuration()
	switch {
	case req.GetWorkflowType().GetName() != types.HAReportWorkflow:
		return fmt.Sprintf("role %s may start only %s, not %s", role, types.HAReportWorkflow, req.GetWorkflowType().GetName())
	case req.GetTaskQueue().GetName() != types.ControllerTaskQueue:
		why = fmt.Sprintf("task queue %q, want %s", req.GetTaskQueue().GetName(), types.ControllerTaskQueue)
	case !reportID(req.GetWorkflowId()):
		why = fmt.Sprintf("workflow ID %q is not a report's (like %s)", req.GetWorkflowId(), types.HAReportID(time.Unix(0, 0)))
	case len(req.GetInput().GetPayloads()) > 0:
		why = "input given; it takes none"
	case timeout <= 0 || timeout > maxReportTimeout:
		why = fmt.Sprintf("execution timeout %s, want more than 0 and at most %s", timeout, maxReportTimeout)
	case req.GetCronSchedule() != "":
		why = fmt.Sprintf("cron schedule %q", req.GetCronSchedule())
	case req.GetWorkflowStartDelay().AsDuration() != 0:
		why = fmt.Sprintf("start delay %s", req.GetWorkflowStartDelay().AsDuration())
	case req.GetRequestEagerExecution():
		why = "eager execution (it would hand the caller the workflow task)"
	case len(req.GetCompletionCallbacks()) > 0:
		why = "completion callbacks"
	case req.GetWorkflowIdConflictPolicy() == enumspb.WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING,
		//lint:ignore SA1019 deprecated for new clients, but the frontend still honours it: a caller may still send it
		req.GetWorkflowIdReusePolicy() == enumspb.WORKFLOW_ID_REUSE_POLICY_TERMINATE_IF_RUNNING:
		why = "an ID policy that terminates a running workflow"
	case req.GetOnConflictOptions() != nil:
		why = "on-conflict options"
	case len(req.GetSearchAttributes().GetIndexedFields()) > 0 || len(req.GetMemo().GetFields()) > 0:
		why = "search attributes or a memo"
	case req.GetContinuedFailure() != nil || req.GetLastCompletionResult() != nil || req.GetVersioningOverride() != nil:
		why = "a continued failure, last completion result or versioning override"
	default:
		return ""
	}
	return fmt.Sprintf("role %s may start %s only as vmha hosts and vmha status do: %s", role, types.HAReportWorkflow, why)
}

// reportID tells an ID of types.HAReportID's making: its prefix and the time it names. Going through HAReportID
// keeps the two in step: an ID of another shape is denied, never allowed.
func reportID(id string) bool {
	const layout = "20060102T150405.000000000Z"
	if len(id) <= len(layout) {
		return false
	}
	at, err := time.Parse(layout, id[len(id)-len(layout):])
	return err == nil && types.HAReportID(at) == id
}
