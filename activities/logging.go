package activities

import (
	"context"
	"log/slog"

	"go.temporal.io/sdk/activity"
)

// withActivityIDs returns logger with the calling activity's workflow ID, run ID, activity ID and type, and
// attempt attached, so that a line can be tied to the workflow that caused it (and found in the Web UI). The
// injected logger is kept rather than the SDK's activity logger: its handler and level are vmha's. Outside an
// activity (a unit test calling a method directly, the keeper's own loops) logger is returned unchanged.
func withActivityIDs(ctx context.Context, logger *slog.Logger) *slog.Logger {
	if !activity.IsActivity(ctx) {
		return logger
	}
	info := activity.GetInfo(ctx)
	return logger.With(
		"workflow_id", info.WorkflowExecution.ID,
		"run_id", info.WorkflowExecution.RunID,
		"activity_id", info.ActivityID,
		"activity_type", info.ActivityType.Name,
		"attempt", info.Attempt,
	)
}
