package workers

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Disk leases are the last barrier against two QEMUs on one disk: with a lock manager libvirt takes a lease on
// every disk before QEMU opens it and refuses a start whose disk a live QEMU on another host holds. vmha's own
// protocol should never get there, but a race it missed then fails a start instead of corrupting a disk. The
// setting is libvirt's, not vmha's: the worker can only read it and say so loudly when it is off.

// lockManagers are the values of qemu.conf's lock_manager that give disk leases.
var lockManagers = map[string]bool{"lockd": true, "sanlock": true}

// lockManagerSetting reads lock_manager from a qemu.conf (libvirt's virConf syntax: `name = value`, strings in
// double or single quotes, `#` comments). set is false when no line assigns it (libvirt's default: no lock
// manager). A setting assigned more than once with different values, or to something other than a string, is an
// error: what libvirt makes of it is not worth guessing when the answer decides whether disks are protected.
func lockManagerSetting(r io.Reader) (value string, set bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(name) != "lock_manager" {
			continue
		}
		v, err := confString(strings.TrimSpace(rest))
		if err != nil {
			return "", false, fmt.Errorf("line %d: lock_manager: %w", n, err)
		}
		if set && v != value {
			return "", false, fmt.Errorf("line %d: lock_manager set again, to %q after %q", n, v, value)
		}
		value, set = v, true
	}
	if err := sc.Err(); err != nil {
		return "", false, err
	}
	return value, set, nil
}

// confString reads a quoted virConf string and allows a comment after it.
func confString(s string) (string, error) {
	if s == "" || (s[0] != '"' && s[0] != '\'') {
		return "", fmt.Errorf("value %q: want a quoted string", s)
	}
	end := strings.IndexByte(s[1:], s[0])
	if end < 0 {
		return "", fmt.Errorf("value %s: no closing quote", s)
	}
	if tail := strings.TrimSpace(s[end+2:]); tail != "" && tail[0] != '#' {
		return "", fmt.Errorf("value %s: unexpected %q after it", s, tail)
	}
	return s[1 : end+1], nil
}

// checkLockManager reads qemu.conf at path and logs whether disk leases are on: at error level when they are off
// or it cannot tell, so that the operator sees it at start. It never stops the worker: HA without leases still
// recovers VMs, it only loses the last barrier.
func checkLockManager(path string, logger *slog.Logger) (on bool) {
	f, err := os.Open(path)
	if err != nil {
		logger.Error("disk leases unknown: cannot read the qemu.conf libvirt uses; a second QEMU on the same disk may not be refused",
			"qemu_conf", path, "error", err)
		return false
	}
	defer f.Close()
	v, set, err := lockManagerSetting(f)
	switch {
	case err != nil:
		logger.Error("disk leases unknown: cannot read lock_manager; a second QEMU on the same disk may not be refused",
			"qemu_conf", path, "error", err)
		return false
	case !set:
		logger.Error(fmt.Sprintf("disk leases are off: lock_manager is not set in %s; a second QEMU on the same disk will not be refused", path),
			"qemu_conf", path, "want", `lock_manager = "lockd" (or "sanlock")`)
		return false
	case !lockManagers[v]:
		logger.Error(fmt.Sprintf("disk leases are off: lock_manager is %q in %s; a second QEMU on the same disk will not be refused", v, path),
			"qemu_conf", path, "want", `lock_manager = "lockd" (or "sanlock")`)
		return false
	}
	logger.Info("disk leases are on: libvirt refuses to start a QEMU on a disk another live QEMU holds",
		"qemu_conf", path, "lock_manager", v)
	return true
}
