package types

import "time"

// Heartbeat is what a hypervisor worker writes to the shared storage at every renewal,
// <share>/vmha/heartbeats/<host>.json. Readers judge liveness by the counter changing, timed with their own clock:
// clocks of hosts differ, so At is for people only.
type Heartbeat struct {
	Host    string    `json:"host"`
	Counter uint64    `json:"counter"`
	At      time.Time `json:"at"`
	// Interval is how often the writer renews.
	Interval time.Duration `json:"interval"`
	// Watchdog says whether this host fences itself when it cannot renew: a hardware watchdog armed with Timeout
	// and petted only after each successful renewal.
	Watchdog WatchdogState `json:"watchdog"`
	// Stats are the host's load and memory as its worker last measured them, in the background every few seconds:
	// a recovery places VMs with them instead of asking every host at the time of the failure.
	Stats *HostStats `json:"stats,omitempty"`
}

// WatchdogState is a host's self-fencing guarantee, as its worker reports it.
type WatchdogState struct {
	Armed   bool          `json:"armed"`
	Timeout time.Duration `json:"timeout,omitempty"`
	Device  string        `json:"device,omitempty"`
}

// HeartbeatVerdict is what the controller concludes from a host's storage heartbeat.
type HeartbeatVerdict string

const (
	// HeartbeatUnknown: no verdict (the controller does not see the share, or the host never wrote one).
	HeartbeatUnknown HeartbeatVerdict = ""
	// HeartbeatAlive: the counter changed within the stop threshold.
	HeartbeatAlive HeartbeatVerdict = "alive"
	// HeartbeatStopped: the counter has not changed for the stop threshold or longer.
	HeartbeatStopped HeartbeatVerdict = "stopped"
	// HeartbeatSelfFenced: stopped for longer than the armed watchdog its last heartbeat announced, plus a margin:
	// that watchdog has powered the host off or reset it by now.
	HeartbeatSelfFenced HeartbeatVerdict = "self-fenced"
)
