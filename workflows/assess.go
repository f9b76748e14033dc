package workflows

import "vmha/types"

// Assess is the decision table: what a probe says about a host, before history is taken into account.
//
// A host is dead only when it is unreachable AND its power is confirmed off: the BMC says off or fault, or its
// storage heartbeat stopped for longer than the hardware watchdog it announced as armed (the host fenced itself).
// Unreachable with power on is a network blockage while the host still renews its storage heartbeat (or nobody can
// tell): its VMs may still be writing their disks, so starting them elsewhere would corrupt them. Unreachable with
// power on and the heartbeat stopped is a hung host: it is fenced first (by the monitor), and dead only then.
//
//	network | power               | heartbeat                 | state
//	up      | on, worker polls    | alive or unknown          | healthy
//	up      | on                  | stopped, self-fenced      | storage-lost
//	up      | anything else       | any                       | suspect
//	failing | any                 | any                       | suspect
//	down    | on                  | alive or unknown          | isolated
//	down    | on                  | stopped, self-fenced      | hung (fence, then dead)
//	down    | off or fault        | any                       | dead
//	down    | unreachable/refused | self-fenced               | dead (its watchdog fenced it)
//	down    | unreachable/refused | alive, stopped or unknown | unknown (alert until an operator confirms)
func Assess(p types.Probe) types.HostState {
	stopped := p.Heartbeat == types.HeartbeatStopped || p.Heartbeat == types.HeartbeatSelfFenced
	switch p.Reach {
	case types.ReachUp:
		switch {
		case p.Power == types.PowerOn && stopped:
			return types.HostStorageLost
		case p.Power == types.PowerOn && p.WorkerAlive:
			return types.HostHealthy
		}
		return types.HostSuspect
	case types.ReachDown:
		switch {
		case p.Power == types.PowerOn && stopped:
			return types.HostHung
		case p.Power == types.PowerOn:
			return types.HostIsolated
		case p.Power == types.PowerOff || p.Power == types.PowerFault:
			return types.HostDead
		case p.Heartbeat == types.HeartbeatSelfFenced:
			return types.HostDead
		default:
			return types.HostUnknown
		}
	default:
		return types.HostSuspect
	}
}

// next combines the assessment with where the host stands: a dead or recovered host starts no second
// recovery, and a recovered host stays recovered until it is healthy again (its VMs run elsewhere now). A host
// whose recovery left VMs behind stays recovery-failed until healthy too: its incident goes on, round after round.
// recover is true when a new incident starts.
func next(current, assessed types.HostState) (state types.HostState, recover bool) {
	switch {
	case (current == types.HostRecovered || current == types.HostRecoveryFailed) && assessed != types.HostHealthy:
		return current, false
	case assessed == types.HostDead && (current == types.HostDead || current == types.HostRecovering):
		return current, false
	case assessed == types.HostDead:
		return types.HostDead, true
	}
	return assessed, false
}
