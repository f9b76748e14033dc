package temporalserver

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/server/api/adminservice/v1"
	"go.temporal.io/server/common/tasktoken"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// lookupTimeout bounds the mutable state read behind one hypervisor answer.
const lookupTimeout = 5 * time.Second

// activityQueues tells which task queue the activity a task token names was scheduled on. A task token is not bound
// to the worker that polled it, and when a worker answers one the server checks its workflow, event and attempt but
// neither its activity type nor its queue: a hypervisor that served one task of a workflow (and so knows its run ID)
// could otherwise forge a token that answers another activity of that workflow, a controller's fencing step say.
// It reads the workflow's mutable state through the frontend's admin API with the server's own certificate.
type activityQueues struct {
	frontendAddress string
	tls             *tls.Config
}

func (q activityQueues) queueOf(ctx context.Context, namespace string, token []byte) (string, error) {
	tok, err := tasktoken.NewSerializer().Deserialize(token)
	if err != nil || tok.GetWorkflowId() == "" || tok.GetRunId() == "" {
		return "", fmt.Errorf("not an activity task token")
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	conn, err := grpc.NewClient(q.frontendAddress, grpc.WithTransportCredentials(credentials.NewTLS(q.tls)))
	if err != nil {
		return "", fmt.Errorf("dial the frontend to check a task token: %w", err)
	}
	defer conn.Close()
	resp, err := adminservice.NewAdminServiceClient(conn).DescribeMutableState(ctx, &adminservice.DescribeMutableStateRequest{
		Namespace: namespace, SkipForceReload: true,
		Execution: &commonpb.WorkflowExecution{WorkflowId: tok.GetWorkflowId(), RunId: tok.GetRunId()},
	})
	if err != nil {
		return "", fmt.Errorf("read workflow %s run %s of the task token: %w", tok.GetWorkflowId(), tok.GetRunId(), err)
	}
	state := cmp.Or(resp.GetCacheMutableState(), resp.GetDatabaseMutableState())
	// As the server finds the activity: by its scheduled event, else by its ID.
	if ai, ok := state.GetActivityInfos()[tok.GetScheduledEventId()]; ok && tok.GetScheduledEventId() != 0 {
		return ai.GetTaskQueue(), nil
	}
	if tok.GetScheduledEventId() == 0 {
		for _, ai := range state.GetActivityInfos() {
			if ai.GetActivityId() == tok.GetActivityId() {
				return ai.GetTaskQueue(), nil
			}
		}
	}
	return "", fmt.Errorf("workflow %s has no pending activity %s (event %d)", tok.GetWorkflowId(), tok.GetActivityId(), tok.GetScheduledEventId())
}
