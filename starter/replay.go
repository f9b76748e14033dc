package starter

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"vmha/workflows"
)

// maxReplayed bounds the running workflows one check replays: every monitor, the scheduler, and what is in flight.
const maxReplayed = 100000

// replayConcurrency is how many histories one check reads and replays at once.
const replayConcurrency = 8

// ReplayResult is one running workflow replayed with this build's workflow code; Err is why it cannot be.
type ReplayResult struct {
	WorkflowID, RunID, Type string
	Events                  int
	Err                     error
}

// ReplayRunning replays the history of every running workflow with the workflow code register gives a replayer
// (workflows.Register: this binary's), without running anything. Run a new build's `vmha check-replay` before its
// controllers replace the old ones: an idle monitor, its watch asleep, gets no workflow task until its host changes,
// so code that cannot replay its history would otherwise show only at the next death, when the monitor stalls
// instead of recovering. It fails only when the running workflows cannot be listed.
func (s Starter) ReplayRunning(ctx context.Context, register func(worker.WorkflowReplayer)) ([]ReplayResult, error) {
	execs, err := s.list(ctx, "ExecutionStatus = 'Running'", maxReplayed)
	if err != nil {
		return nil, err
	}
	logger := sdklog.NewStructuredLogger(slog.New(slog.DiscardHandler))
	results := make([]ReplayResult, len(execs))
	sem := make(chan struct{}, replayConcurrency)
	var wg sync.WaitGroup
	for i, e := range execs {
		results[i] = ReplayResult{WorkflowID: e.GetExecution().GetWorkflowId(), RunID: e.GetExecution().GetRunId(), Type: e.GetType().GetName()}
		wg.Add(1)
		go func(r *ReplayResult) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			h, err := s.history(ctx, r.WorkflowID, r.RunID)
			if err != nil {
				r.Err = err
				return
			}
			r.Events = len(h.GetEvents())
			replayer := worker.NewWorkflowReplayer()
			register(replayer)
			if err := replayer.ReplayWorkflowHistory(logger, h); err != nil {
				r.Err = fmt.Errorf("replay: %w", err)
			}
		}(&results[i])
	}
	wg.Wait()
	sort.Slice(results, func(i, j int) bool { return results[i].WorkflowID < results[j].WorkflowID })
	return results, nil
}

// CheckReplay replays every running workflow with this binary's workflow code (`vmha check-replay`) and prints
// each that cannot be replayed; the exit code is StatusNeedsPerson when any cannot (an ExitError),
// StatusUnavailable when vmha could not be asked.
func (s Starter) CheckReplay(ctx context.Context) error {
	return s.checkReplay(ctx, func(r worker.WorkflowReplayer) { workflows.Register(r) })
}

func (s Starter) checkReplay(ctx context.Context, register func(worker.WorkflowReplayer)) error {
	results, err := s.ReplayRunning(ctx, register)
	if err != nil {
		return ExitError{Code: StatusUnavailable, Err: err}
	}
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
			fmt.Fprintf(s.Out, "CANNOT REPLAY  %s (%s, run %s): %s\n", r.WorkflowID, r.Type, r.RunID, firstLine(r.Err.Error()))
		}
	}
	if failed == 0 {
		_, err := fmt.Fprintf(s.Out, "all %d running workflows replay with this build's workflow code\n", len(results))
		return err
	}
	fmt.Fprintf(s.Out, "%d of %d running workflows cannot be replayed by this build: its controllers would stall them "+
		"(guard the change with workflow.GetVersion; docs/production.md, \"Upgrading vmha\")\n", failed, len(results))
	return ExitError{Code: StatusNeedsPerson}
}

// history reads one run's whole history.
func (s Starter) history(ctx context.Context, id, runID string) (*historypb.History, error) {
	h := &historypb.History{}
	it := s.Client.GetWorkflowHistory(ctx, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("history of %s (run %s): %w", id, runID, err)
		}
		h.Events = append(h.Events, e)
	}
	return h, nil
}
