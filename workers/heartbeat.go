package workers

import (
	"log/slog"

	"vmha/activities/heartbeat"
	"vmha/activities/watchdog"
	"vmha/infra/config"
)

// HostHeartbeat returns the storage heartbeat writer of one host (activities/heartbeat), not started: it renews
// <share>/vmha/heartbeats/<host>.json every VMHA_HEARTBEAT_INTERVAL, and with VMHA_WATCHDOG_DEVICE set it arms
// that watchdog for VMHA_WATCHDOG_TIMEOUT after its first successful renewal and pets it after each one.
//
// If the watchdog cannot be armed (no such device, a driver that refuses the timeout, another process holding
// /dev/watchdog, the lab's FIFO without its reader), the worker logs an error and runs without it: its heartbeats
// then say armed=false, so the controller never counts on a self-fencing that does not exist (without it, a host
// nobody can tell is off waits for a person), while the host keeps serving its VMs, its share queue and its
// heartbeat, which tells the controller the host is alive. Refusing to start would make a healthy host look hung
// for a configuration mistake. Arming is not retried: fix the device and restart the worker.
func HostHeartbeat(s config.Settings, logger *slog.Logger) *heartbeat.Writer {
	w := &heartbeat.Writer{Root: s.SharePath, Host: s.HostName, Interval: s.HeartbeatInterval, Timeout: s.ShareTimeout,
		Logger: logger}
	if s.WatchdogDevice == "" {
		return w
	}
	device, timeout := s.WatchdogDevice, s.WatchdogTimeout
	w.Arm = func() watchdog.Watchdog {
		wd := watchdog.New(device)
		if err := wd.Arm(timeout); err != nil {
			logger.Error("watchdog not armed: running without self-fencing (heartbeats say armed=false); "+
				"fix "+config.Prefix+"_WATCHDOG_DEVICE and restart the worker", "device", device, "timeout", timeout, "error", err)
			return nil
		}
		logger.Info("watchdog armed: this host is powered off or reset if its storage heartbeat is not renewed in time",
			"watchdog", wd.State())
		return wd
	}
	return w
}
