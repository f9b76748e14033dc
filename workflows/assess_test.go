package workflows

import (
	"fmt"
	"testing"

	"vmha/types"
)

// TestDecisionTable covers every combination of network, power, worker liveness and storage heartbeat, against
// the table in the README.
func TestDecisionTable(t *testing.T) {
	powers := []types.PowerState{types.PowerOn, types.PowerOff, types.PowerFault, types.PowerUnreachable, types.PowerAuthFailed}
	beats := []types.HeartbeatVerdict{types.HeartbeatUnknown, types.HeartbeatAlive, types.HeartbeatStopped, types.HeartbeatSelfFenced}
	class := func(p types.PowerState) string {
		switch p {
		case types.PowerOn:
			return "on"
		case types.PowerOff, types.PowerFault:
			return "off"
		}
		return "unusable"
	}
	beatClass := func(h types.HeartbeatVerdict) string {
		switch h {
		case types.HeartbeatStopped:
			return "stopped"
		case types.HeartbeatSelfFenced:
			return "self-fenced"
		}
		return "alive"
	}
	// network/power/heartbeat -> state, with "healthy" meaning healthy if the worker polls, else suspect.
	table := map[string]types.HostState{
		"up/on/alive": types.HostHealthy, "up/on/stopped": types.HostStorageLost, "up/on/self-fenced": types.HostStorageLost,
		"down/on/alive": types.HostIsolated, "down/on/stopped": types.HostHung, "down/on/self-fenced": types.HostHung,
		"down/off/alive": types.HostDead, "down/off/stopped": types.HostDead, "down/off/self-fenced": types.HostDead,
		"down/unusable/alive": types.HostUnknown, "down/unusable/stopped": types.HostUnknown, "down/unusable/self-fenced": types.HostDead,
	}
	cases := 0
	for _, reach := range []types.Reachability{types.ReachUp, types.ReachFailing, types.ReachDown} {
		for _, power := range powers {
			for _, worker := range []bool{true, false} {
				for _, beat := range beats {
					expected, ok := table[fmt.Sprintf("%s/%s/%s", reach, class(power), beatClass(beat))]
					if !ok {
						expected = types.HostSuspect
					}
					if expected == types.HostHealthy && !worker {
						expected = types.HostSuspect
					}
					name := fmt.Sprintf("network %s, power %s, worker %t, heartbeat %q", reach, power, worker, beat)
					t.Run(name, func(t *testing.T) {
						got := Assess(types.Probe{Reach: reach, Power: power, WorkerAlive: worker, Heartbeat: beat})
						if got != expected {
							t.Fatalf("Assess(%s) = %s, want %s", name, got, expected)
						}
					})
					cases++
				}
			}
		}
	}
	if cases != 120 {
		t.Fatalf("table has %d cases, want 3 network x 5 power x 2 worker x 4 heartbeat = 120", cases)
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
