package watchdog

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"vmha/types"
)

// The Linux watchdog ioctls (include/uapi/linux/watchdog.h), with the asm-generic _IOC encoding of x86, arm and
// arm64 (not mips, powerpc or sparc): WDIOC_SETTIMEOUT = _IOWR('W', 6, int), WDIOC_GETTIMEOUT = _IOR('W', 7, int).
// golang.org/x/sys/unix has them too, but is only an indirect requirement of this module; these two numbers are
// all we need (and TestIoctlNumbers recomputes them).
const (
	wdiocSetTimeout = 0xc0045706
	wdiocGetTimeout = 0x80045707
)

// ioctlInt is ioctl(fd, req, &v): the watchdog ioctls take a pointer to an int, which SETTIMEOUT also writes back.
func ioctlInt(fd uintptr, req uintptr, v *int32) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(unsafe.Pointer(v))); errno != 0 {
		return errno
	}
	return nil
}

// Device is the Linux watchdog API (Documentation/watchdog/watchdog-api.rst) on a device such as /dev/watchdog:
//   - Arm opens the device write-only, which starts the timer, then sets the timeout with the WDIOC_SETTIMEOUT
//     ioctl (whole seconds, rounded up) and reads back the timeout the driver really uses (WDIOC_GETTIMEOUT: a
//     driver may round it), which State reports;
//   - Pet writes one byte (a newline: any byte but 'V' pets);
//   - Disarm writes 'V' and closes (the magic close). A kernel built with CONFIG_WATCHDOG_NOWAYOUT, or a driver
//     loaded with nowayout=1, ignores the magic close: the host is then reset at the timeout after a worker stops,
//     unless the worker is restarted and arms again within it. Check /sys/class/watchdog/watchdog0/nowayout;
//   - Abandon closes without 'V': the driver then lets the timer expire.
//
// The device can be opened by one process at a time: a second worker on the same host fails to arm.
type Device struct {
	Path string

	mu      sync.Mutex
	f       *os.File
	timeout time.Duration
	// setTimeout is the WDIOC_SETTIMEOUT + WDIOC_GETTIMEOUT exchange; tests replace it to run the write protocol
	// on a regular file, which has no ioctls.
	setTimeout func(f *os.File, seconds int) (int, error)
}

var _ Watchdog = (*Device)(nil)

// NewDevice returns the Linux watchdog at path, not armed.
func NewDevice(path string) *Device { return &Device{Path: path, setTimeout: ioctlTimeout} }

// ioctlTimeout sets the timeout and returns the one the driver took.
func ioctlTimeout(f *os.File, seconds int) (int, error) {
	conn, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var got int
	var ioErr error
	if err := conn.Control(func(fd uintptr) {
		v := int32(seconds)
		if ioErr = ioctlInt(fd, wdiocSetTimeout, &v); ioErr != nil {
			ioErr = fmt.Errorf("WDIOC_SETTIMEOUT %d s: %w", seconds, ioErr)
			return
		}
		if ioErr = ioctlInt(fd, wdiocGetTimeout, &v); ioErr != nil {
			ioErr = fmt.Errorf("WDIOC_GETTIMEOUT: %w", ioErr)
		}
		got = int(v)
	}); err != nil {
		return 0, err
	}
	return got, ioErr
}

// Arm opens the device (starting the timer) and sets timeout, rounded up to whole seconds.
func (d *Device) Arm(timeout time.Duration) error {
	seconds := int((timeout + time.Second - 1) / time.Second)
	if seconds < 1 {
		return fmt.Errorf("watchdog %s: timeout %s: want >= 1s", d.Path, timeout)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		f, err := os.OpenFile(d.Path, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("open watchdog: %w", err)
		}
		d.f = f
	}
	got, err := d.setTimeout(d.f, seconds)
	if err != nil {
		// The timer runs with the driver's previous timeout: stop it rather than leave a guarantee nobody states.
		_, werr := d.f.Write([]byte("V"))
		cerr := d.f.Close()
		d.f, d.timeout = nil, 0
		return errors.Join(fmt.Errorf("watchdog %s: %w", d.Path, err), werr, cerr)
	}
	if got <= 0 {
		got = seconds
	}
	if _, err := d.f.Write([]byte("\n")); err != nil {
		// A caller that sees Arm fail runs without the watchdog and never pets it: stop it.
		_, werr := d.f.Write([]byte("V"))
		cerr := d.f.Close()
		d.f, d.timeout = nil, 0
		return errors.Join(fmt.Errorf("watchdog %s: first keepalive: %w", d.Path, err), werr, cerr)
	}
	d.timeout = time.Duration(got) * time.Second
	return nil
}

// Pet writes one keepalive byte.
func (d *Device) Pet() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return fmt.Errorf("watchdog %s: not armed", d.Path)
	}
	if _, err := d.f.Write([]byte("\n")); err != nil {
		return fmt.Errorf("watchdog %s: keepalive: %w", d.Path, err)
	}
	return nil
}

// Disarm is the magic close: 'V', then close.
func (d *Device) Disarm() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return nil
	}
	_, werr := d.f.Write([]byte("V"))
	cerr := d.f.Close()
	d.f, d.timeout = nil, 0
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("watchdog %s: magic close: %w (the timer may still run)", d.Path, err)
	}
	return nil
}

// Abandon closes the device without the magic character: the timer keeps running.
func (d *Device) Abandon() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f, d.timeout = nil, 0
	return err
}

// State reports the device, and the timeout while armed.
func (d *Device) State() types.WatchdogState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return types.WatchdogState{Device: d.Path}
	}
	return types.WatchdogState{Armed: true, Timeout: d.timeout, Device: d.Path}
}
