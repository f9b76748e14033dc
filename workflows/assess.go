package workflows

import "vmha/types"

// Assess is the decision table: what a probe says about a host, before history is taken into account.
//
// A host is dead only when it is unreachable AND its BMC says power off or fault. Unreachable with power on is a
// network blockage: its VMs may still be writing their disks, so starting them elsewhere would corrupt them.
// Unreachable with a BMC that cannot be asked is unknown, for the same reason.
//
//	network \ power | on        off/fault  unreachable/auth-failed
//	up              | healthy*  suspect    suspect
//	failing         | suspect   suspect    suspect
//	down            | isolated  dead       unknown
//
// (*) healthy also needs the host's worker to poll; without it the host is suspect.
func Assess(p types.Probe) types.HostState {
	switch p.Reach {
	case types.ReachUp:
		if p.Power == types.PowerOn && p.WorkerAlive {
			return types.HostHealthy
		}
		return types.HostSuspect
	case types.ReachDown:
		switch p.Power {
		case types.PowerOn:
			return types.HostIsolated
		case types.PowerOff, types.PowerFault:
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
