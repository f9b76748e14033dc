// Package watchdog is a host's self-fencing guarantee: a timer that powers the host off or resets it unless it is
// petted in time. The hypervisor worker arms it at start and pets it only after each successful renewal of its
// storage heartbeat (activities/heartbeat), so a host that can no longer renew (hung kernel, lost share, frozen
// worker) is taken down by the watchdog within its timeout, and the controller may then recover its VMs without a
// person even when the BMC cannot be asked.
//
// Two implementations behind one interface:
//   - Device: Linux /dev/watchdog (on real servers backed by the BMC's IPMI watchdog or the chipset's).
//   - File: the lab's simulated hardware watchdog, a line protocol written to a file or FIFO the lab provides
//     (see File for the protocol, ParseLine and LabTimer for the lab's side).
//
// New selects one from VMHA_WATCHDOG_DEVICE.
package watchdog

import (
	"strings"
	"time"

	"vmha/types"
)

// Watchdog is a hardware (or simulated) watchdog timer. Methods are safe for concurrent use.
type Watchdog interface {
	// Arm starts the timer with timeout (opening the device); arming an armed watchdog sets the new timeout and
	// restarts the timer. Until Pet, Disarm or Abandon, the host is powered off or reset timeout after Arm.
	Arm(timeout time.Duration) error
	// Pet restarts the timer. An error means the timer was not restarted.
	Pet() error
	// Disarm stops the timer for good (Linux's magic close: 'V', then close), so that a worker that stops cleanly
	// does not take its host down. After Disarm, Pet fails until the next Arm.
	Disarm() error
	// Abandon closes the device WITHOUT stopping the timer: the host is taken down at the timeout unless another
	// process arms and pets it first. For a stop that cannot tell the readers of its heartbeat that the guarantee
	// is gone (activities/heartbeat), where keeping the guarantee is the safe side.
	Abandon() error
	// State is what the heartbeat reports: armed or not, the timeout in force, the device.
	State() types.WatchdogState
}

// FilePrefix in VMHA_WATCHDOG_DEVICE selects the lab's File watchdog: "file:/run/vmha/hv1.watchdog".
const FilePrefix = "file:"

// Default settings (VMHA_WATCHDOG_TIMEOUT; the Linux default of most drivers is 60 s, far too long to recover by).
const DefaultTimeout = 10 * time.Second

// New returns the watchdog VMHA_WATCHDOG_DEVICE names, not armed: nil for "" (no watchdog), a File for
// "file:PATH", else the Linux Device at that path (usually /dev/watchdog).
func New(device string) Watchdog {
	switch {
	case device == "":
		return nil
	case strings.HasPrefix(device, FilePrefix):
		return NewFile(strings.TrimPrefix(device, FilePrefix))
	default:
		return NewDevice(device)
	}
}
