package workflows

import (
	"fmt"
	"testing"

	"vmha/types"
)

// TestDecisionTable covers every combination of network, power and worker liveness, and its outcome.
func TestDecisionTable(t *testing.T) {
	powers := []types.PowerState{types.PowerOn, types.PowerOff, types.PowerFault, types.PowerUnreachable, types.PowerAuthFailed}
	want := map[types.Reachability]map[types.PowerState]types.HostState{
		types.ReachUp: {types.PowerOn: types.HostHealthy, types.PowerOff: types.HostSuspect, types.PowerFault: types.HostSuspect,
			types.PowerUnreachable: types.HostSuspect, types.PowerAuthFailed: types.HostSuspect},
		types.ReachFailing: {types.PowerOn: types.HostSuspect, types.PowerOff: types.HostSuspect, types.PowerFault: types.HostSuspect,
			types.PowerUnreachable: types.HostSuspect, types.PowerAuthFailed: types.HostSuspect},
		types.ReachDown: {types.PowerOn: types.HostIsolated, types.PowerOff: types.HostDead, types.PowerFault: types.HostDead,
			types.PowerUnreachable: types.HostUnknown, types.PowerAuthFailed: types.HostUnknown},
	}
	cases := 0
	for reach, byPower := range want {
		for _, power := range powers {
			for _, worker := range []bool{true, false} {
				expected := byPower[power]
				if expected == types.HostHealthy && !worker {
					expected = types.HostSuspect
				}
				name := fmt.Sprintf("network %s, power %s, worker %t", reach, power, worker)
				t.Run(name, func(t *testing.T) {
					got := Assess(types.Probe{Reach: reach, Power: power, WorkerAlive: worker})
					if got != expected {
						t.Fatalf("Assess(%s) = %s, want %s", name, got, expected)
					}
				})
				cases++
			}
		}
	}
	if cases != 30 {
		t.Fatalf("table has %d cases, want 3 network x 5 power x 2 worker = 30", cases)
	}
}

// TestNext covers what history adds: one recovery per incident, and recovered sticks until healthy.
func TestNext(t *testing.T) {
	for _, c := range []struct {
		current, assessed, want types.HostState
		recover                 bool
	}{
		{types.HostHealthy, types.HostDead, types.HostDead, true},
		{types.HostSuspect, types.HostDead, types.HostDead, true},
		{types.HostIsolated, types.HostDead, types.HostDead, true},
		{types.HostUnknown, types.HostDead, types.HostDead, true},
		{types.HostDead, types.HostDead, types.HostDead, false},
		{types.HostRecovering, types.HostDead, types.HostRecovering, false},
		{types.HostRecovered, types.HostDead, types.HostRecovered, false},
		{types.HostRecovered, types.HostSuspect, types.HostRecovered, false},
		{types.HostRecovered, types.HostIsolated, types.HostRecovered, false},
		{types.HostRecovered, types.HostHealthy, types.HostHealthy, false},
		{types.HostRecoveryFailed, types.HostDead, types.HostRecoveryFailed, false},
		{types.HostRecoveryFailed, types.HostIsolated, types.HostRecoveryFailed, false},
		{types.HostRecoveryFailed, types.HostSuspect, types.HostRecoveryFailed, false},
		{types.HostHealthy, types.HostIsolated, types.HostIsolated, false},
		{types.HostIsolated, types.HostHealthy, types.HostHealthy, false},
		{"", types.HostHealthy, types.HostHealthy, false},
	} {
		got, recover := next(c.current, c.assessed)
		if got != c.want || recover != c.recover {
			t.Errorf("next(%q, %s) = %s, %t; want %s, %t", c.current, c.assessed, got, recover, c.want, c.recover)
		}
	}
}
