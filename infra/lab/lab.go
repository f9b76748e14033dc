// Package lab drives lab.sh, a lab of simulated hypervisor hosts on this machine (network, PID and mount
// namespaces running libvirtd and the vmha hypervisor worker, each with an ipmi_sim BMC), for end-to-end tests.
// It needs root. The lab's names (bridge labbr0, namespaces vmha-hvK, BMC ports 9622+K) are fixed, so one lab runs
// per machine: Up waits for any other lab started through this package to be torn down.
package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultHosts is the number of hosts Up starts when Options.N is zero.
const DefaultHosts = 3

// Options says what lab to bring up.
type Options struct {
	// N is the number of hosts, hv1..hvN (default DefaultHosts).
	N int
	// Dir holds the lab's state, the share and the BMC password files (default: a new directory under os.TempDir).
	// Down removes it.
	Dir string
	// VMHABin is the vmha binary each host runs as `VMHABin hypervisor` (empty: no worker).
	VMHABin string
	// Env is extra environment for lab.sh, as "KEY=value"; every VMHA_* variable reaches the workers.
	Env []string
	// Script is lab.sh (default: the one next to this package's source).
	Script string
}

// Lab is a running lab. Its methods name hosts "hv1".."hvN".
type Lab struct {
	// Dir is the lab's state directory ($VMHA_LAB_DIR); the share is Dir/share.
	Dir string
	// Script is the lab.sh this lab runs.
	Script string
	// N is the number of hosts.
	N int

	env  []string
	lock *os.File // held from Up to Down: one lab per machine
}

// Up brings up a lab and returns once every host's libvirtd and BMC answer. On failure it tears down what it
// started.
func Up(ctx context.Context, opts Options) (*Lab, error) {
	l := &Lab{Dir: opts.Dir, Script: opts.Script, N: opts.N}
	if l.N == 0 {
		l.N = DefaultHosts
	}
	if l.Script == "" {
		l.Script = defaultScript()
	}
	if l.Dir == "" {
		dir, err := os.MkdirTemp("", "vmha-lab-")
		if err != nil {
			return nil, fmt.Errorf("lab state directory: %w", err)
		}
		l.Dir = dir
	}
	l.env = append([]string{"VMHA_LAB_DIR=" + l.Dir}, opts.Env...)
	if opts.VMHABin != "" {
		l.env = append(l.env, "VMHA_BIN="+opts.VMHABin)
	}
	lock, err := lockMachine(ctx, l.Script)
	if err != nil {
		return nil, err
	}
	l.lock = lock
	if _, err := l.run(ctx, "up", strconv.Itoa(l.N)); err != nil {
		// A fresh context: ctx may be what failed, and the half-built lab must go anyway.
		downCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if downErr := l.Down(downCtx); downErr != nil {
			return nil, errors.Join(err, downErr)
		}
		return nil, err
	}
	return l, nil
}

// Down stops every process the lab started, deletes its namespaces, links and bridge, and removes Dir.
// It is safe to call more than once.
func (l *Lab) Down(ctx context.Context) error {
	if l.lock == nil {
		return nil
	}
	_, err := l.run(ctx, "down")
	if err != nil {
		return err
	}
	unlockErr := l.lock.Close()
	l.lock = nil
	if unlockErr != nil {
		return fmt.Errorf("release lab lock on %s: %w", l.Script, unlockErr)
	}
	return nil
}

// PowerOff turns the host's chassis power off through its BMC (ipmitool lanplus): libvirtd, every qemu and the
// worker die at once, and its link goes down.
func (l *Lab) PowerOff(ctx context.Context, host string) error {
	_, err := l.run(ctx, "power-off", host)
	return err
}

// PowerOn turns the host's chassis power on through its BMC and returns once its libvirtd answers.
// No domain is started: a host that comes back has every domain shut off.
func (l *Lab) PowerOn(ctx context.Context, host string) error {
	_, err := l.run(ctx, "power-on", host)
	return err
}

// Cut takes the host's link down; the host keeps running (a TCP connect to it then hangs: dial with a deadline).
func (l *Lab) Cut(ctx context.Context, host string) error {
	_, err := l.run(ctx, "cut", host)
	return err
}

// Restore brings the host's link back up.
func (l *Lab) Restore(ctx context.Context, host string) error {
	_, err := l.run(ctx, "restore", host)
	return err
}

// KillWorker SIGKILLs the host's vmha worker; the host's restart loop starts a new one about a second later.
func (l *Lab) KillWorker(ctx context.Context, host string) error {
	_, err := l.run(ctx, "kill-worker", host)
	return err
}

// Virsh runs virsh against the host's libvirtd over qemu+tcp and returns its standard output.
func (l *Lab) Virsh(ctx context.Context, host string, args ...string) (string, error) {
	return l.run(ctx, append([]string{"virsh", host}, args...)...)
}

// HideShare bind-mounts an empty directory over the share in the host's mount namespace: the host then sees an
// empty share directory, as after an NFS mount that failed at boot (a `nofail` mount). ShowShare undoes it.
func (l *Lab) HideShare(ctx context.Context, host string) error {
	_, err := l.run(ctx, "hide-share", host)
	return err
}

// ShowShare removes HideShare's mount: the host sees the share again.
func (l *Lab) ShowShare(ctx context.Context, host string) error {
	_, err := l.run(ctx, "show-share", host)
	return err
}

// Shadow bind-mounts a private copy of file (under Dir) over it in the host's mount namespace: a QEMU there opens
// another inode at the same path, so QEMU's own image lock does not see another host's QEMU, while virtlockd's
// lease (keyed by the path, kept on the share) does. Unshadow undoes it.
func (l *Lab) Shadow(ctx context.Context, host, file string) error {
	_, err := l.run(ctx, "shadow", host, file)
	return err
}

// Unshadow removes Shadow's mount and copy.
func (l *Lab) Unshadow(ctx context.Context, host, file string) error {
	_, err := l.run(ctx, "unshadow", host, file)
	return err
}

// HoldWorker arms the host's libvirt hook: the next time the domain named vm has started there, the host's vmha
// worker is SIGKILLed and kept down until ReleaseWorker (or a power cycle). The activity that started the domain
// never answers, and nothing more can run on that host's queue.
func (l *Lab) HoldWorker(ctx context.Context, host, vm string) error {
	_, err := l.run(ctx, "hold-worker", host, vm)
	return err
}

// ReleaseWorker disarms HoldWorker and lets the host's worker start again.
func (l *Lab) ReleaseWorker(ctx context.Context, host string) error {
	_, err := l.run(ctx, "release-worker", host)
	return err
}

// Ready is true while the host is powered, its libvirtd answered since its last boot, and it is not hung (a hung
// host's libvirtd is frozen: a call to it would never return).
func (l *Lab) Ready(host string) bool {
	_, err := os.Stat(filepath.Join(l.Dir, host, "ready"))
	return err == nil && !l.Hung(host)
}

// Hung is true from Hang until Thaw or the host's power-off.
func (l *Lab) Hung(host string) bool {
	_, err := os.Stat(filepath.Join(l.Dir, host, "hung"))
	return err == nil
}

// PoweredOn is true while the host's init (its "power") runs, hung or not.
func (l *Lab) PoweredOn(host string) bool {
	b, err := os.ReadFile(filepath.Join(l.Dir, host, "power.pid"))
	if err != nil {
		return false
	}
	comm, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(string(b)), "comm"))
	return err == nil && strings.TrimSpace(string(comm)) == "tini"
}

// Hang freezes every process of the host (SIGSTOP: libvirtd, every QEMU, virtlockd, the vmha worker) and takes its
// link down, as a kernel hang would; its BMC still says on, and a power-off kills it for real. It returns the
// instant the freeze completed.
func (l *Lab) Hang(ctx context.Context, host string) (time.Time, error) {
	out, err := l.run(ctx, "hang", host)
	if err != nil {
		return time.Time{}, err
	}
	us, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("lab.sh hang %s: instant %q: %w", host, out, err)
	}
	return time.UnixMicro(us), nil
}

// Thaw continues a hung host and brings its link up; a host powered off meanwhile stays off.
func (l *Lab) Thaw(ctx context.Context, host string) error {
	_, err := l.run(ctx, "thaw", host)
	return err
}

// BMCOff kills the host's BMC (ipmi_sim): it no longer answers. The host's power does not change.
func (l *Lab) BMCOff(ctx context.Context, host string) error {
	_, err := l.run(ctx, "bmc-off", host)
	return err
}

// BMCOn starts the host's BMC again and returns once it answers.
func (l *Lab) BMCOn(ctx context.Context, host string) error {
	_, err := l.run(ctx, "bmc-on", host)
	return err
}

// PullPlug takes the power from the host and its BMC together (one supply): nobody can ask whether it is off.
func (l *Lab) PullPlug(ctx context.Context, host string) error {
	_, err := l.run(ctx, "pull-plug", host)
	return err
}

// StorageCut makes the host lose the share while its network works (HideShare); StorageRestore undoes it.
func (l *Lab) StorageCut(ctx context.Context, host string) error {
	_, err := l.run(ctx, "storage-cut", host)
	return err
}

// StorageRestore gives the host its share back.
func (l *Lab) StorageRestore(ctx context.Context, host string) error {
	_, err := l.run(ctx, "storage-restore", host)
	return err
}

// Watchdog makes the host's worker arm the host's lab watchdog with timeout (on), or not (off), from the worker's
// next start (a boot, or KillWorker).
func (l *Lab) Watchdog(ctx context.Context, host string, on bool, timeout time.Duration) error {
	if !on {
		_, err := l.run(ctx, "watchdog", host, "off")
		return err
	}
	_, err := l.run(ctx, "watchdog", host, "on", timeout.String())
	return err
}

// LocalURI is a libvirt URI for the host's libvirtd through its unix socket, which answers even while the host is
// cut off.
func (l *Lab) LocalURI(host string) string {
	return "qemu:///system?socket=" + filepath.Join(l.Dir, host, "run", "libvirt-sock")
}

// Status returns lab.sh status: one line per host with power, link, libvirtd, worker, BMC and domains.
func (l *Lab) Status(ctx context.Context) (string, error) {
	return l.run(ctx, "status")
}

// DomainStates lists the domains of every powered host, read through the host's local libvirt socket (so a cut
// host answers too): host -> domain name -> virsh state ("running", "shut off", "paused", ...).
// A powered-off host has no entry; a powered host without domains has an empty map.
func (l *Lab) DomainStates(ctx context.Context) (map[string]map[string]string, error) {
	out, err := l.run(ctx, "domains")
	if err != nil {
		return nil, err
	}
	states := map[string]map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		fields := strings.Split(line, "\t")
		if states[fields[0]] == nil {
			states[fields[0]] = map[string]string{}
		}
		switch len(fields) {
		case 1:
		case 3:
			states[fields[0]][fields[1]] = fields[2]
		default:
			return nil, fmt.Errorf("lab.sh domains: unexpected line %q", line)
		}
	}
	return states, nil
}

// Inventory writes the lab's vmha inventory (YAML, types.Inventory) to Dir/inventory.yaml and returns its path.
func (l *Lab) Inventory(ctx context.Context) (string, error) {
	out, err := l.run(ctx, "inventory")
	if err != nil {
		return "", err
	}
	path := filepath.Join(l.Dir, "inventory.yaml")
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		return "", fmt.Errorf("write lab inventory %s: %w", path, err)
	}
	return path, nil
}

// Hosts names the lab's hosts in order.
func (l *Lab) Hosts() []string {
	hosts := make([]string, l.N)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("hv%d", i+1)
	}
	return hosts
}

// Address is the host's management address on the lab bridge.
func (l *Lab) Address(host string) (string, error) {
	k, err := l.index(host)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("10.250.0.%d", 10+k), nil
}

// BMCPort is the UDP port of the host's BMC on 127.0.0.1.
func (l *Lab) BMCPort(host string) (int, error) {
	k, err := l.index(host)
	if err != nil {
		return 0, err
	}
	return 9622 + k, nil
}

// PasswordFile is the file holding the host's BMC password (user admin).
func (l *Lab) PasswordFile(host string) (string, error) {
	if _, err := l.index(host); err != nil {
		return "", err
	}
	return filepath.Join(l.Dir, "secrets", host+".bmc"), nil
}

func (l *Lab) index(host string) (int, error) {
	k, err := strconv.Atoi(strings.TrimPrefix(host, "hv"))
	if !strings.HasPrefix(host, "hv") || err != nil || k < 1 || k > l.N {
		return 0, fmt.Errorf("host %q: the lab has hosts hv1..hv%d", host, l.N)
	}
	return k, nil
}

// run runs lab.sh and returns its standard output; errors carry its standard error.
func (l *Lab) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "/bin/bash", append([]string{l.Script}, args...)...)
	cmd.Env = append(os.Environ(), l.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The lab's daemons never hold lab.sh's pipes; this only bounds a bug that would make one do so.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("lab.sh %s (VMHA_LAB_DIR=%s): %w: %s",
			strings.Join(args, " "), l.Dir, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// defaultScript is the lab.sh beside this file: the package is only used from source (tests).
func defaultScript() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "lab.sh")
}

// lockMachine takes an exclusive flock on the script, held until Down, so that labs started by concurrent test
// processes take turns instead of fighting over the fixed bridge, namespaces and ports.
func lockMachine(ctx context.Context, script string) (*os.File, error) {
	f, err := os.Open(script)
	if err != nil {
		return nil, fmt.Errorf("lab script: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", script, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another lab to go down (lock on %s): %w", script, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
