package temporalserver

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	workerpb "go.temporal.io/api/worker/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/server/common/api"
	"go.temporal.io/server/common/authorization"
	"google.golang.org/protobuf/types/known/durationpb"

	"vmha/activities"
	"vmha/types"
)

const ns = "vmha"

func claimsOf(t *testing.T, role, name string) *authorization.Claims {
	t.Helper()
	subject := pkix.Name{CommonName: name, Organization: []string{"vmha"}}
	if role != "" {
		subject.OrganizationalUnit = []string{role}
	}
	c, err := claimMapper{}.GetClaims(&authorization.AuthInfo{TLSSubject: &subject})
	if err != nil {
		t.Fatalf("GetClaims(%s): %v", subject, err)
	}
	return c
}

// fakeTasks stands for activityQueues: a token here is the name of its activity's queue, "gone" one of an activity
// no longer pending.
type fakeTasks struct{}

func (fakeTasks) queueOf(_ context.Context, _ string, token []byte) (string, error) {
	switch string(token) {
	case "":
		return "", errors.New("not an activity task token")
	case "gone":
		return "", nil
	}
	return string(token), nil
}

func wfs(method string) string { return api.WorkflowServicePrefix + method }

func queue(name string) *taskqueuepb.TaskQueue { return &taskqueuepb.TaskQueue{Name: name} }

func start(workflowType, id, taskQueue string, input ...any) *workflowservice.StartWorkflowExecutionRequest {
	req := &workflowservice.StartWorkflowExecutionRequest{Namespace: ns, WorkflowId: id,
		WorkflowType: &commonpb.WorkflowType{Name: workflowType}, TaskQueue: queue(taskQueue)}
	for _, in := range input {
		data, _ := json.Marshal(in)
		req.Input = &commonpb.Payloads{Payloads: []*commonpb.Payload{{
			Metadata: map[string][]byte{"encoding": []byte("json/plain")}, Data: data}}}
	}
	return req
}

// report is an HA report's start as starter.Starter makes it, changed by change unless it is nil.
func report(change func(*workflowservice.StartWorkflowExecutionRequest)) *workflowservice.StartWorkflowExecutionRequest {
	r := start(types.HAReportWorkflow, types.HAReportID(time.Now()), types.ControllerTaskQueue)
	r.WorkflowExecutionTimeout = durationpb.New(10 * time.Second)
	if change != nil {
		change(r)
	}
	return r
}

func signal(id, name string) *workflowservice.SignalWorkflowExecutionRequest {
	return &workflowservice.SignalWorkflowExecutionRequest{Namespace: ns, SignalName: name,
		WorkflowExecution: &commonpb.WorkflowExecution{WorkflowId: id}}
}

func pollActivities(q string) *workflowservice.PollActivityTaskQueueRequest {
	return &workflowservice.PollActivityTaskQueueRequest{Namespace: ns, TaskQueue: queue(q)}
}

// TestAuthorizerRoles checks each role's rules call by call, as the frontend hands them to the authorizer.
func TestAuthorizerRoles(t *testing.T) {
	monitor := types.HostMonitorID("hv1")
	strayMine := types.StrayCopy{VM: "web1", UUID: "u-1", Host: "hv1", Owner: "hv2"}
	strayOther := types.StrayCopy{VM: "web1", UUID: "u-1", Host: "hv2", Owner: "hv3"}
	type call struct {
		method string
		req    any
		allow  bool
	}
	for _, tc := range []struct {
		role, name string
		calls      []call
	}{
		{"hypervisor", "hv1", []call{
			{"PollActivityTaskQueue", pollActivities(types.HostTaskQueue("hv1")), true},
			{"PollActivityTaskQueue", pollActivities(types.ShareTaskQueue), true},
			{"PollActivityTaskQueue", pollActivities(types.HostTaskQueue("hv2")), false},
			{"PollActivityTaskQueue", pollActivities(types.ControllerTaskQueue), false},
			{"PollWorkflowTaskQueue", &workflowservice.PollWorkflowTaskQueueRequest{Namespace: ns, TaskQueue: queue(types.HostTaskQueue("hv1"))}, false},
			{"DescribeNamespace", &workflowservice.DescribeNamespaceRequest{Namespace: ns}, true},
			{"DescribeTaskQueue", &workflowservice.DescribeTaskQueueRequest{Namespace: ns, TaskQueue: queue(types.HostTaskQueue("hv1"))}, true},
			{"DescribeTaskQueue", &workflowservice.DescribeTaskQueueRequest{Namespace: ns, TaskQueue: queue(types.HostTaskQueue("hv2"))}, false},
			{"RecordActivityTaskHeartbeat", &workflowservice.RecordActivityTaskHeartbeatRequest{Namespace: ns, TaskToken: []byte(types.HostTaskQueue("hv1"))}, true},
			{"RespondActivityTaskCompleted", &workflowservice.RespondActivityTaskCompletedRequest{Namespace: ns, TaskToken: []byte(types.ShareTaskQueue)}, true},
			{"RespondActivityTaskFailed", &workflowservice.RespondActivityTaskFailedRequest{Namespace: ns, TaskToken: []byte(types.HostTaskQueue("hv1"))}, true},
			{"RespondActivityTaskCanceled", &workflowservice.RespondActivityTaskCanceledRequest{Namespace: ns, TaskToken: []byte(types.HostTaskQueue("hv1"))}, true},
			{"RespondActivityTaskCompleted", &workflowservice.RespondActivityTaskCompletedRequest{Namespace: ns, TaskToken: []byte(types.ControllerTaskQueue)}, false},
			{"RecordActivityTaskHeartbeat", &workflowservice.RecordActivityTaskHeartbeatRequest{Namespace: ns, TaskToken: []byte(types.HostTaskQueue("hv2"))}, false},
			{"RespondActivityTaskFailed", &workflowservice.RespondActivityTaskFailedRequest{Namespace: ns}, false},
			{"RecordActivityTaskHeartbeat", &workflowservice.RecordActivityTaskHeartbeatRequest{Namespace: ns, TaskToken: []byte("gone")}, true},
			{"RespondWorkflowTaskCompleted", &workflowservice.RespondWorkflowTaskCompletedRequest{Namespace: ns, TaskToken: []byte(types.HostTaskQueue("hv1"))}, false},
			{"RespondQueryTaskCompleted", &workflowservice.RespondQueryTaskCompletedRequest{Namespace: ns, TaskToken: []byte(types.HostTaskQueue("hv1"))}, false},
			{"RespondActivityTaskCompletedById", &workflowservice.RespondActivityTaskCompletedByIdRequest{Namespace: ns}, false},
			{"RecordWorkerHeartbeat", &workflowservice.RecordWorkerHeartbeatRequest{Namespace: ns, WorkerHeartbeat: []*workerpb.WorkerHeartbeat{
				{TaskQueue: types.HostTaskQueue("hv1")}, {TaskQueue: types.ShareTaskQueue}}}, true},
			{"RecordWorkerHeartbeat", &workflowservice.RecordWorkerHeartbeatRequest{Namespace: ns, WorkerHeartbeat: []*workerpb.WorkerHeartbeat{
				{TaskQueue: types.HostTaskQueue("hv2")}}}, false},
			{"ShutdownWorker", &workflowservice.ShutdownWorkerRequest{Namespace: ns, TaskQueue: types.HostTaskQueue("hv1")}, true},
			{"ShutdownWorker", &workflowservice.ShutdownWorkerRequest{Namespace: ns, TaskQueue: types.ControllerTaskQueue}, false},
			{"StartWorkflowExecution", start(types.StrayCopyWorkflow, types.StrayCopyID("u-1", "hv1"), types.ControllerTaskQueue, strayMine), true},
			{"StartWorkflowExecution", start(types.StrayCopyWorkflow, types.StrayCopyID("u-1", "hv2"), types.ControllerTaskQueue, strayOther), false},
			{"StartWorkflowExecution", start(types.StrayCopyWorkflow, types.StrayCopyID("u-1", "hv1"), types.ControllerTaskQueue, strayOther), false},
			{"StartWorkflowExecution", start(types.ManualFailoverWorkflow, types.ManualFailoverID("hv2"), types.ControllerTaskQueue), false},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalFenced), false},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalMaintenance), false},
			{"TerminateWorkflowExecution", &workflowservice.TerminateWorkflowExecutionRequest{Namespace: ns}, false},
			{"QueryWorkflow", &workflowservice.QueryWorkflowRequest{Namespace: ns}, false},
			{"ListWorkflowExecutions", &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns}, false},
			{"UpdateWorkflowExecution", &workflowservice.UpdateWorkflowExecutionRequest{Namespace: ns}, false},
			{"ListNamespaces", &workflowservice.ListNamespacesRequest{}, false},
			{"GetSystemInfo", &workflowservice.GetSystemInfoRequest{}, true},
		}},
		{"operator", "alice", []call{
			{"StartWorkflowExecution", start(types.ManualFailoverWorkflow, types.ManualFailoverID("hv1"), types.ControllerTaskQueue), true},
			{"StartWorkflowExecution", start(types.ApplyInventoryWorkflow, types.ApplyInventoryID, types.ControllerTaskQueue), true},
			{"StartWorkflowExecution", start(types.CreateVMWorkflow, types.CreateVMID("web1"), types.ControllerTaskQueue), true},
			{"StartWorkflowExecution", report(nil), true},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.CronSchedule = "@every 1s" }), false},
			{"StartWorkflowExecution", start(types.ManualFailoverWorkflow, types.ManualFailoverID("hv1"), types.HostTaskQueue("hv1")), false},
			{"StartWorkflowExecution", start(types.HostRecoveryWorkflow, "vmha-recovery-hv1-x-1", types.ControllerTaskQueue), false},
			{"StartWorkflowExecution", start(types.StrayCopyWorkflow, types.StrayCopyID("u-1", "hv1"), types.ControllerTaskQueue, strayMine), false},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalMaintenance), true},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalFenced), false},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalRetire), false},
			{"SignalWorkflowExecution", signal(types.SchedulerWorkflowID, activities.SignalMaintenance), false},
			{"SignalWithStartWorkflowExecution", &workflowservice.SignalWithStartWorkflowExecutionRequest{Namespace: ns}, false},
			{"PollActivityTaskQueue", pollActivities(types.HostTaskQueue("hv1")), false},
			{"PollWorkflowTaskQueue", &workflowservice.PollWorkflowTaskQueueRequest{Namespace: ns, TaskQueue: queue(types.ControllerTaskQueue)}, false},
			{"RespondActivityTaskCompleted", &workflowservice.RespondActivityTaskCompletedRequest{Namespace: ns}, false},
			{"TerminateWorkflowExecution", &workflowservice.TerminateWorkflowExecutionRequest{Namespace: ns}, false},
			{"ListWorkflowExecutions", &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns}, true},
			{"GetWorkflowExecutionHistory", &workflowservice.GetWorkflowExecutionHistoryRequest{Namespace: ns}, true},
			{"QueryWorkflow", &workflowservice.QueryWorkflowRequest{Namespace: ns}, true},
			{"ListNamespaces", &workflowservice.ListNamespacesRequest{}, true},
		}},
		{"viewer", "bob", []call{
			{"ListWorkflowExecutions", &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns}, true},
			{"CountWorkflowExecutions", &workflowservice.CountWorkflowExecutionsRequest{Namespace: ns}, true},
			{"DescribeWorkflowExecution", &workflowservice.DescribeWorkflowExecutionRequest{Namespace: ns}, true},
			{"QueryWorkflow", &workflowservice.QueryWorkflowRequest{Namespace: ns}, true},
			{"GetSearchAttributes", &workflowservice.GetSearchAttributesRequest{}, true},
			{"StartWorkflowExecution", report(nil), true},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.WorkflowId = monitor }), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.WorkflowId = "vmha-ha-report-1" }), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.TaskQueue = queue(types.ShareTaskQueue) }), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.WorkflowExecutionTimeout = nil }), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				r.WorkflowExecutionTimeout = durationpb.New(time.Hour)
			}), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.Input = start("", "", "", 1).Input }), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) { r.RequestEagerExecution = true }), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				r.WorkflowStartDelay = durationpb.New(24 * time.Hour)
			}), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				r.CompletionCallbacks = []*commonpb.Callback{{}}
			}), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				r.WorkflowIdConflictPolicy = enumspb.WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING
			}), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				//lint:ignore SA1019 the deprecated policy is what an old client may send, so the authorizer must refuse it
				r.WorkflowIdReusePolicy = enumspb.WORKFLOW_ID_REUSE_POLICY_TERMINATE_IF_RUNNING
			}), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				r.SearchAttributes = &commonpb.SearchAttributes{IndexedFields: map[string]*commonpb.Payload{types.HostStateAttr.GetName(): {}}}
			}), false},
			{"StartWorkflowExecution", report(func(r *workflowservice.StartWorkflowExecutionRequest) {
				r.WorkflowType = &commonpb.WorkflowType{Name: types.ManualFailoverWorkflow}
			}), false},
			{"StartWorkflowExecution", start(types.ManualFailoverWorkflow, types.ManualFailoverID("hv1"), types.ControllerTaskQueue), false},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalMaintenance), false},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalFenced), false},
			{"TerminateWorkflowExecution", &workflowservice.TerminateWorkflowExecutionRequest{Namespace: ns}, false},
			{"RequestCancelWorkflowExecution", &workflowservice.RequestCancelWorkflowExecutionRequest{Namespace: ns}, false},
			{"PollWorkflowTaskQueue", &workflowservice.PollWorkflowTaskQueueRequest{Namespace: ns, TaskQueue: queue(types.ControllerTaskQueue)}, false},
			{"PollActivityTaskQueue", pollActivities(types.ShareTaskQueue), false},
			{"ListWorkflowExecutions", &workflowservice.ListWorkflowExecutionsRequest{Namespace: "temporal-system"}, false},
		}},
		{"controller", "c1", []call{
			{"PollWorkflowTaskQueue", &workflowservice.PollWorkflowTaskQueueRequest{Namespace: ns, TaskQueue: queue(types.ControllerTaskQueue)}, true},
			{"PollActivityTaskQueue", pollActivities(types.HostTaskQueue("hv2")), true},
			{"StartWorkflowExecution", start(types.ManualFailoverWorkflow, types.ManualFailoverID("hv1"), types.ControllerTaskQueue), true},
			{"SignalWorkflowExecution", signal(monitor, activities.SignalFenced), true},
			{"TerminateWorkflowExecution", &workflowservice.TerminateWorkflowExecutionRequest{Namespace: ns}, true},
			{"StartWorkflowExecution", &workflowservice.StartWorkflowExecutionRequest{Namespace: "temporal-system"}, false},
			{"UpdateNamespace", &workflowservice.UpdateNamespaceRequest{Namespace: ns}, true},
			{"RegisterNamespace", &workflowservice.RegisterNamespaceRequest{Namespace: "other"}, false},
		}},
		{"admin", "mallory", []call{
			{"ListWorkflowExecutions", &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns}, false},
		}},
		{"", "nobody", []call{
			{"ListWorkflowExecutions", &workflowservice.ListWorkflowExecutionsRequest{Namespace: ns}, false},
		}},
	} {
		claims := claimsOf(t, tc.role, tc.name)
		var logs bytes.Buffer
		a := &authorizer{namespace: ns, tasks: fakeTasks{}, logger: slog.New(slog.NewTextHandler(&logs, nil))}
		for _, c := range tc.calls {
			logs.Reset()
			target := &authorization.CallTarget{APIName: wfs(c.method), Request: c.req}
			if r, ok := c.req.(interface{ GetNamespace() string }); ok {
				target.Namespace = r.GetNamespace()
			}
			res, err := a.Authorize(context.Background(), claims, target)
			if err != nil {
				t.Fatalf("%s %s: %s: %v", tc.role, tc.name, c.method, err)
			}
			if got := res.Decision == authorization.DecisionAllow; got != c.allow {
				t.Errorf("%s %s: %s %v: allowed %t, want %t (%s)", tc.role, tc.name, c.method, c.req, got, c.allow, res.Reason)
			}
			denied := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "api="+wfs(c.method))
			if denied == c.allow {
				t.Errorf("%s %s: %s: warn log %q, want one exactly when denied", tc.role, tc.name, c.method, logs.String())
			}
		}
	}
}

func TestAuthorizerAdminService(t *testing.T) {
	a := &authorizer{namespace: ns, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	target := &authorization.CallTarget{APIName: api.AdminServicePrefix + "DescribeCluster"}
	for role, want := range map[string]bool{"server": true, "controller": false, "operator": false} {
		res, err := a.Authorize(context.Background(), claimsOf(t, role, "x1"), target)
		if err != nil || (res.Decision == authorization.DecisionAllow) != want {
			t.Errorf("%s: admin API allowed %v (%v), want %t", role, res.Decision, err, want)
		}
	}
	res, _ := a.Authorize(context.Background(), nil, &authorization.CallTarget{APIName: wfs("ListWorkflowExecutions"), Namespace: ns})
	if res.Decision == authorization.DecisionAllow {
		t.Error("no claims (no certificate): allowed")
	}
}
