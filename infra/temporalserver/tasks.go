package temporalserver

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/api/serviceerror"
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
// It reads the workflow's mutable state through the frontend's admin API with the server's own certificate, on one
// connection kept for the server's life (a TLS handshake per answer would cost more than the read).
type activityQueues struct {
	frontendAddress string
	tls             *tls.Config

	once sync.Once
	conn *grpc.ClientConn
	err  error
}

func (q *activityQueues) admin() (adminservice.AdminServiceClient, error) {
	q.once.Do(func() {
		// NewClient connects at the first call, when the frontend serves.
		q.conn, q.err = grpc.NewClient(q.frontendAddress, grpc.WithTransportCredentials(credentials.NewTLS(q.tls)))
	})
	if q.err != nil {
		return nil, fmt.Errorf("dial the frontend to check task tokens: %w", q.err)
	}
	return adminservice.NewAdminServiceClient(q.conn), nil
}

// close ends the connection, if one was made.
func (q *activityQueues) close() error {
	if q.conn == nil {
		return nil
	}
	if err := q.conn.Close(); err != nil {
		return fmt.Errorf("close the task token checker's connection: %w", err)
	}
	return nil
}

// queueOf is the queue of the pending activity token names, or "" when there is none (the workflow or the activity
// is gone): the server then refuses the token itself, with the NotFound an SDK expects for an activity that ended.
func (q *activityQueues) queueOf(ctx context.Context, namespace string, token []byte) (string, error) {
	tok, err := tasktoken.NewSerializer().Deserialize(token)
	if err != nil || tok.GetWorkflowId() == "" || tok.GetRunId() == "" {
		return "", fmt.Errorf("not an activity task token")
	}
	admin, err := q.admin()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	resp, err := admin.DescribeMutableState(ctx, &adminservice.DescribeMutableStateRequest{
		Namespace: namespace, SkipForceReload: true,
		Execution: &commonpb.WorkflowExecution{WorkflowId: tok.GetWorkflowId(), RunId: tok.GetRunId()},
	})
	var notFound *serviceerror.NotFound
	if errors.As(err, &notFound) {
		return "", nil
	}
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
	return "", nil
}
