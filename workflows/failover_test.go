package workflows

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/testsuite"

	"vmha/activities"
	"vmha/types"
)

// failoverEnv is a host in state with a BMC reading power; it records fencing calls and the hand-over signal.
func failoverEnv(state types.HostState, power types.PowerState) (*testsuite.TestWorkflowEnvironment, *[]string) {
	env := baseEnv()
	var mu sync.Mutex
	calls := []string{}
	record := func(s string) { mu.Lock(); calls = append(calls, s); mu.Unlock() }
	env.OnActivity(controller.DescribeHost, mock.Anything, "hv1").Return(types.Candidate{Spec: types.HostSpec{Name: "hv1"}, State: state}, nil)
	env.OnActivity(controller.PowerStatus, mock.Anything, mock.Anything).Return(power, nil)
	env.OnActivity(controller.LoadPolicy, mock.Anything).Return(defaultPolicy, nil)
	env.OnActivity(controller.PowerOff, mock.Anything, mock.Anything).Return(func(context.Context, types.HostSpec) error { record("power-off"); return nil })
	env.OnActivity(controller.WaitPowerOff, mock.Anything, mock.Anything).Return(func(context.Context, types.HostSpec) error { record("confirmed-off"); return nil })
	env.OnSignalExternalWorkflow(mock.Anything, types.HostMonitorID("hv1"), "", activities.SignalFenced, mock.Anything).Return(
		func(_, _, _, _ string, arg interface{}) error {
			if by := arg.(activities.FenceNotice).ConfirmedOffBy; by != "" {
				record("signal-fenced(confirmed off by " + by + ")")
				return nil
			}
			record("signal-fenced")
			return nil
		})
	return env, &calls
}

func TestManualFailover(t *testing.T) {
	for _, c := range []struct {
		name      string
		state     types.HostState
		power     types.PowerState
		fence     bool
		wantCalls string
		wantErr   string
	}{
		{"running host with fence is powered off, confirmed, then handed over", types.HostHealthy, types.PowerOn, true, "power-off,confirmed-off,signal-fenced", ""},
		{"running host without fence is refused", types.HostHealthy, types.PowerOn, false, "", "set fence=true"},
		{"host already off needs no fence", types.HostIsolated, types.PowerOff, false, "signal-fenced", ""},
		{"host with power fault counts as off", types.HostSuspect, types.PowerFault, false, "signal-fenced", ""},
		{"unreachable BMC is refused even with fence", types.HostUnknown, types.PowerUnreachable, true, "", "cannot make sure the host is off"},
		{"wrong BMC password is refused", types.HostUnknown, types.PowerAuthFailed, true, "", "cannot make sure the host is off"},
		{"host already recovering is refused", types.HostRecovering, types.PowerOff, true, "", "already recovering"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, calls := failoverEnv(c.state, c.power)
			env.ExecuteWorkflow(ManualFailover, types.FailoverRequest{Host: "hv1", Fence: c.fence})
			err := env.GetWorkflowError()
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("error %v, want %q", err, c.wantErr)
			}
			if got := strings.Join(*calls, ","); got != c.wantCalls {
				t.Fatalf("calls %q, want %q", got, c.wantCalls)
			}
		})
	}
}

// TestManualFailoverConfirmPoweredOff (issue 7): a host whose BMC cannot be asked is handed over only on an
// operator's confirmation, with who and why; the BMC saying "on" always wins.
func TestManualFailoverConfirmPoweredOff(t *testing.T) {
	for _, c := range []struct {
		name      string
		power     types.PowerState
		req       types.FailoverRequest
		wantCalls string
		wantErr   string
	}{
		{"confirmed by an operator with a reason", types.PowerUnreachable,
			types.FailoverRequest{Host: "hv1", ConfirmPoweredOff: true, Reason: "checked the PDU", By: "alice@ops"},
			"signal-fenced(confirmed off by alice@ops)", ""},
		{"no reason", types.PowerUnreachable, types.FailoverRequest{Host: "hv1", ConfirmPoweredOff: true, By: "alice@ops"}, "", `reason ""`},
		{"nobody", types.PowerAuthFailed, types.FailoverRequest{Host: "hv1", ConfirmPoweredOff: true, Reason: "x"}, "", `by ""`},
		{"the BMC says on", types.PowerOn,
			types.FailoverRequest{Host: "hv1", ConfirmPoweredOff: true, Reason: "checked", By: "alice@ops"}, "", "set fence=true"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, calls := failoverEnv(types.HostUnknown, c.power)
			env.ExecuteWorkflow(ManualFailover, c.req)
			err := env.GetWorkflowError()
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("error %v, want %q", err, c.wantErr)
			}
			if got := strings.Join(*calls, ","); got != c.wantCalls {
				t.Fatalf("calls %q, want %q", got, c.wantCalls)
			}
		})
	}
}
