package workflows_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
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

// TestReplayRecordedHistories replays, against today's workflow code, two kinds of histories:
//   - the current set, testdata/*.json, recorded from the code as it is (tests/cluster_test.go with
//     VMHA_RECORD_HISTORIES=1 rewrites it): a change that breaks it must be re-recorded on purpose;
//   - every frozen set, testdata/released/<commit>/*.json, recorded by a build that was released: workflows it
//     started may still be running when a new build takes over, and the new worker must replay them.
//
// When a change breaks a frozen history, guard it with workflow.GetVersion (Temporal's patching), so that runs
// started by the old code keep taking the old path. Never re-record, edit or delete a frozen set to make this test
// pass: that is exactly the upgrade that would stall every running monitor with TMPRL1100 (testdata/released/README.md).
func TestReplayRecordedHistories(t *testing.T) {
	sets := map[string]string{"current": "testdata"}
	released, err := filepath.Glob(filepath.Join("testdata", "released", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range released {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			sets["released/"+filepath.Base(dir)] = dir
		}
	}
	if len(sets) < 2 {
		t.Fatal("no frozen set in testdata/released: an upgrade would be checked against nothing but the code itself")
	}
	for name, dir := range sets {
		t.Run(name, func(t *testing.T) {
			if name != "current" {
				checkFrozen(t, dir)
			}
			replaySet(t, dir)
		})
	}
}

// replaySet replays every history in dir and requires one of each workflow type vmha starts, so that a set
// missing a type cannot pass by saying nothing about it.
func replaySet(t *testing.T, dir string) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
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
			t.Errorf("no recorded history of %s in %s: run the cluster tests with VMHA_RECORD_HISTORIES=1 (current set only)", typ, dir)
		}
	}
}

// checkFrozen compares a frozen set with its SHA256SUMS (made with `sha256sum *.json > SHA256SUMS` when the set was
// frozen), so a history overwritten or dropped to get past a replay failure fails here instead.
func checkFrozen(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		t.Fatalf("frozen set %s: %v", dir, err)
	}
	defer f.Close()
	listed := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		want, file, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("%s/SHA256SUMS: line %q is not \"<sha256>  <file>\"", dir, sc.Text())
		}
		listed[file] = true
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			t.Errorf("frozen history %s/%s: %v", dir, file, err)
			continue
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != want {
			t.Errorf("frozen history %s/%s was changed: guard the workflow change with workflow.GetVersion instead", dir, file)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s/SHA256SUMS: %v", dir, err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if !listed[filepath.Base(file)] {
			t.Errorf("%s is not in %s/SHA256SUMS: a frozen set does not grow", file, dir)
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
