package activities_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"

	"vmha/activities"
	"vmha/types"
)

// logLine decodes the one JSON line a test logged.
func logLine(t *testing.T, buf *bytes.Buffer) map[string]any {
	t.Helper()
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("want one JSON log line, got %q: %v", buf.String(), err)
	}
	return line
}

func TestActivityLogLinesCarryTheirWorkflow(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	var seen activity.Info
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivityWithOptions(func(ctx context.Context) error {
		seen = activity.GetInfo(ctx)
		activities.WithActivityIDs(ctx, logger).Warn("power status", "host", "hv1")
		return nil
	}, activity.RegisterOptions{Name: "LogsAWarning"})
	if _, err := env.ExecuteActivity("LogsAWarning"); err != nil {
		t.Fatal(err)
	}
	line := logLine(t, &buf)
	want := map[string]any{
		"msg":           "power status",
		"host":          "hv1",
		"workflow_id":   seen.WorkflowExecution.ID,
		"run_id":        seen.WorkflowExecution.RunID,
		"activity_id":   seen.ActivityID,
		"activity_type": "LogsAWarning",
		"attempt":       float64(1),
	}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
	for _, k := range []string{"workflow_id", "run_id", "activity_id"} {
		if line[k] == "" {
			t.Errorf("%s is empty: %v", k, line)
		}
	}
}

func TestLoggerOutsideAnActivityIsUnchanged(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	got := activities.WithActivityIDs(context.Background(), logger)
	if got != logger {
		t.Error("outside an activity the injected logger is not returned as is")
	}
	got.Info("catalog updated", "vm", "web1")
	line := logLine(t, &buf)
	for _, k := range []string{"workflow_id", "run_id", "activity_id", "activity_type", "attempt"} {
		if _, ok := line[k]; ok {
			t.Errorf("line outside an activity has %s: %v", k, line)
		}
	}
	if line["vm"] != "web1" {
		t.Errorf("vm = %v, want web1", line["vm"])
	}
}

// silentOnceBMC does not answer its first reading, then says on.
type silentOnceBMC struct{ readings int }

func (b *silentOnceBMC) PowerStatus(context.Context, types.BMCSpec, string) (types.PowerState, error) {
	b.readings++
	if b.readings == 1 {
		return types.PowerUnreachable, errors.New("no answer")
	}
	return types.PowerOn, nil
}

func (b *silentOnceBMC) PowerOff(context.Context, types.BMCSpec, string) error { return nil }

// TestPowerStatusLogsItsWorkflow: an activity's own warning names the activity that logged it.
func TestPowerStatusLogsItsWorkflow(t *testing.T) {
	t.Setenv("VMHA_TEST_BMC_PASSWORD", "secret")
	var buf bytes.Buffer
	c := &activities.Controller{Power: &silentOnceBMC{}, Logger: slog.New(slog.NewJSONHandler(&buf, nil)),
		Probe: activities.ProbeSettings{Interval: 10 * time.Millisecond, BMCTimeout: time.Second, PowerConfirmations: 2}}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	env.RegisterActivity(c)
	spec := types.HostSpec{Name: "hv1", BMC: types.BMCSpec{Address: "127.0.0.1", User: "admin", PasswordEnv: "VMHA_TEST_BMC_PASSWORD"}}
	if _, err := env.ExecuteActivity("PowerStatus", spec); err != nil {
		t.Fatal(err)
	}
	line := logLine(t, &buf)
	if line["msg"] != "power status" || line["activity_type"] != "PowerStatus" || line["workflow_id"] == nil || line["attempt"] != float64(1) {
		t.Errorf("warning of an unanswered reading %v: want it to name activity PowerStatus, its workflow and attempt 1", line)
	}
}
