package workflows_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"vmha/types"
	"vmha/workflows"
)

// TestReplayRecordedHistories replays histories recorded from real runs (tests/integration_test.go with
// VMHA_RECORD_HISTORIES=1) against today's workflow code: a change that would break running workflows (an activity
// added, removed or reordered, a timer moved) fails here with a non-determinism error.
func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	covered := map[string]bool{}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".json")
		t.Run(name, func(t *testing.T) {
			covered[workflowType(t, file)] = true
			r := worker.NewWorkflowReplayer()
			workflows.Register(r)
			logger := log.NewStructuredLogger(slog.New(slog.DiscardHandler))
			if err := r.ReplayWorkflowHistoryFromJSONFile(logger, file); err != nil {
				t.Fatalf("replay %s: %v", file, err)
			}
		})
	}
	for _, typ := range []string{types.HostMonitorWorkflow, types.HostRecoveryWorkflow, types.RecoverVMWorkflow,
		types.CreateVMWorkflow, types.ManualFailoverWorkflow, types.SchedulerWorkflow, types.ApplyInventoryWorkflow} {
		if !covered[typ] {
			t.Errorf("no recorded history of %s in testdata: run the integration tests with VMHA_RECORD_HISTORIES=1", typ)
		}
	}
}

// workflowType reads the type from a history's first event, as the replayer will.
func workflowType(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Events []struct {
			Attributes struct {
				WorkflowType struct {
					Name string `json:"name"`
				} `json:"workflowType"`
			} `json:"workflowExecutionStartedEventAttributes"`
		} `json:"events"`
	}
	if err := json.Unmarshal(b, &h); err != nil || len(h.Events) == 0 || h.Events[0].Attributes.WorkflowType.Name == "" {
		t.Fatalf("%s: not a workflow history starting with WorkflowExecutionStarted (%v)", file, err)
	}
	return h.Events[0].Attributes.WorkflowType.Name
}
