// Package workflows holds vmha's runbooks as Temporal workflows: watch a host, recover a dead host's VMs, create a
// VM, fail a host over on an operator's word, apply the inventory, and serialise placements. Workflows decide;
// activities (package activities) do the I/O.
package workflows

import (
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

// Activity receivers: workflows name activities by method value; the worker registers the real structs.
var (
	controller *activities.Controller
	onHost     *activities.Host
	onShare    *activities.Share
)

// says names an activity call in plain words for the Web UI's timeline (Temporal's user metadata): which host,
// which VM, what for.
func says(ctx workflow.Context, format string, args ...any) workflow.Context {
	o := workflow.GetActivityOptions(ctx)
	o.Summary = fmt.Sprintf(format, args...)
	return workflow.WithActivityOptions(ctx, o)
}

// watchFor bounds a steady watch: a healthy host costs six history events per watchFor (docs/benchmark.md).
const watchFor = time.Hour

// Non-retryable error types raised by activities and workflows.
var nonRetryable = types.NonRetryableErrorTypes

// watchOptions: the watch heartbeats every tick, so a dead controller is noticed within HeartbeatTimeout and the
// watch moves to another replica; it is retried forever because a host must never go unwatched.
func watchOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           types.WatchTaskQueue,
		StartToCloseTimeout: watchFor + 5*time.Minute,
		HeartbeatTimeout:    5 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    200 * time.Millisecond,
			BackoffCoefficient: 2,
			MaximumInterval:    5 * time.Second,
		},
	})
}

// controllerOptions: control-plane calls (placement, listings, policy, inventory) take milliseconds; a few fast
// retries ride out a restarting controller, after which the workflow decides. StartToClose is what a recovery
// waits when the controller running one of these calls dies (SIGKILL, power): 5 s, not the 30 s it was, which
// TestLabCluster saw as a 30 s stall of a recovery's host listing.
func controllerOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           types.ControllerTaskQueue,
		StartToCloseTimeout: 5 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        100 * time.Millisecond,
			BackoffCoefficient:     2,
			MaximumInterval:        5 * time.Second,
			MaximumAttempts:        6,
			NonRetryableErrorTypes: nonRetryable,
		},
	})
}

// bmcReadOptions: a confirmed power reading keeps asking the BMC until its answers agree or the call's time is up
// (an unreachable BMC answers "unreachable" then), so it gets the 30 s a slow BMC may need.
func bmcReadOptions(ctx workflow.Context) workflow.Context {
	o := workflow.GetActivityOptions(controllerOptions(ctx))
	o.StartToCloseTimeout = 30 * time.Second
	return workflow.WithActivityOptions(ctx, o)
}

// notifyOptions: a webhook receiver may be down for a moment; users still want the event, so keep trying for a
// minute, never on a recovery's critical path (notifications are awaited only when a workflow ends).
func notifyOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              types.ControllerTaskQueue,
		StartToCloseTimeout:    15 * time.Second,
		ScheduleToCloseTimeout: time.Minute,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    time.Second,
			BackoffCoefficient: 2,
			MaximumInterval:    15 * time.Second,
		},
	})
}

// fenceOptions: powering a host off must get through (a few retries), and waiting for the BMC to confirm is
// bounded by the configured fence timeout and heartbeats.
func fenceOptions(ctx workflow.Context, timeout time.Duration) workflow.Context {
	if timeout <= 0 {
		timeout = time.Minute
	}
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           types.ControllerTaskQueue,
		StartToCloseTimeout: timeout,
		HeartbeatTimeout:    5 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        500 * time.Millisecond,
			BackoffCoefficient:     2,
			MaximumInterval:        5 * time.Second,
			MaximumAttempts:        5,
			NonRetryableErrorTypes: nonRetryable,
		},
	})
}

// hostOptions: libvirt calls on one host. ScheduleToStart is short: if that host's worker does not pick the
// task up quickly, the host is not a good target and the next candidate is tried. Calls are idempotent,
// so a few retries are safe.
func hostOptions(ctx workflow.Context, host string) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              types.HostTaskQueue(host),
		ScheduleToStartTimeout: 10 * time.Second,
		StartToCloseTimeout:    60 * time.Second,
		HeartbeatTimeout:       10 * time.Second,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        200 * time.Millisecond,
			BackoffCoefficient:     2,
			MaximumInterval:        2 * time.Second,
			MaximumAttempts:        3,
			NonRetryableErrorTypes: nonRetryable,
		},
	})
}

// statsOptions: a host that cannot report its stats within seconds is left out of this placement; no retry.
func statsOptions(ctx workflow.Context, host string) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              types.HostTaskQueue(host),
		ScheduleToStartTimeout: 2 * time.Second,
		StartToCloseTimeout:    5 * time.Second,
		RetryPolicy:            &temporal.RetryPolicy{MaximumAttempts: 1},
	})
}

// shareOptions: catalog reads may be served by any live host; a hung share times out inside the activity,
// and a few retries land on other hosts. The activities heartbeat while they run, so a task handed to a hung
// host's pending poll (its worker frozen, its connection still open) is retried elsewhere after ShareHeartbeat,
// not after the whole StartToCloseTimeout.
func shareOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              types.ShareTaskQueue,
		ScheduleToStartTimeout: 30 * time.Second,
		StartToCloseTimeout:    30 * time.Second,
		HeartbeatTimeout:       ShareHeartbeat,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    200 * time.Millisecond,
			BackoffCoefficient: 2,
			MaximumInterval:    5 * time.Second,
			MaximumAttempts:    5,
		},
	})
}

// recoveryTaskTimeout bounds one workflow task of a recovery (see childOptions): short enough that a dead
// controller's task moves on in seconds, long enough for a task delayed by a busy machine.
const recoveryTaskTimeout = 4 * time.Second

// ShareHeartbeat is the heartbeat timeout of the share queue's activities.
const ShareHeartbeat = 2 * time.Second

// childOptions: one child per ID, refused if that ID ever ran, which makes a recovery at-most-once per incident.
// Children outlive a parent that is terminated or continues as new. A recovery's workflow task that a controller
// took and then died with is handed to another replica after recoveryTaskTimeout instead of Temporal's 10 s
// (TestLabCluster's timeline: a SIGKILLed controller held a HostRecovery's task for exactly 10 s); its tasks take
// milliseconds.
func childOptions(ctx workflow.Context, id, host, summary, details string) workflow.Context {
	return workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            id,
		WorkflowTaskTimeout:   recoveryTaskTimeout,
		StaticSummary:         summary,
		StaticDetails:         details,
		TaskQueue:             types.ControllerTaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_ABANDON,
		TypedSearchAttributes: temporal.NewSearchAttributes(types.HostAttr.ValueSet(host)),
	})
}
