package types_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	failurepb "go.temporal.io/api/failure/v1"
	"go.temporal.io/sdk/temporal"

	"vmha/types"
)

// TestExplainShowsTheRootCauseOnce: a failed recovery's chain (child workflow error around activity error around
// the cause) printed 2,000 characters with the cause repeated; people get vmha's own context and the cause once.
func TestExplainShowsTheRootCauseOnce(t *testing.T) {
	// The chain as the SDK decodes it from history: an activity failure caused by an application failure.
	activityFailure := temporal.GetDefaultFailureConverter().FailureToError(&failurepb.Failure{
		Message:     "activity error",
		FailureInfo: &failurepb.Failure_ActivityFailureInfo{ActivityFailureInfo: &failurepb.ActivityFailureInfo{ActivityId: "5"}},
		Cause: &failurepb.Failure{
			Message:     "list catalog: share not mounted",
			FailureInfo: &failurepb.Failure_ApplicationFailureInfo{ApplicationFailureInfo: &failurepb.ApplicationFailureInfo{Type: "ShareNotMounted"}},
		},
	})
	chain := fmt.Errorf("list HA VMs of hv1: %w", activityFailure)
	got := types.Explain(chain)
	if !strings.HasPrefix(got, "list HA VMs of hv1: list catalog: share not mounted") || strings.Count(got, "share not mounted") != 1 {
		t.Fatalf("Explain = %q", got)
	}
	if got := types.Explain(errors.New("no eligible target")); got != "no eligible target" {
		t.Fatalf("Explain of a plain error = %q", got)
	}
}
