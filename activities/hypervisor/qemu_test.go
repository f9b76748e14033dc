package hypervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"libvirt.org/go/libvirt"

	"vmha/activities"
	"vmha/activities/domainxml"
	"vmha/types"
)

// TestQEMU runs a real libvirtd with the QEMU driver in its own mount and PID namespaces (tini as PID 1 reaps
// QEMU at once) and drives a Build() domain with a qcow2 disk through it, including a libvirtd crash.
func TestQEMU(t *testing.T) {
	for _, bin := range []string{"libvirtd", "qemu-system-x86_64", "qemu-img", "tini", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed: %v", bin, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("a private libvirtd needs root for its mount and PID namespaces")
	}
	if _, err := user.Lookup("libvirt-qemu"); err != nil {
		t.Skip("libvirtd resolves user libvirt-qemu before reading qemu.conf: create groups kvm and libvirt-qemu and user libvirt-qemu")
	}
	dir := t.TempDir()
	sock, daemon := startLibvirtd(t, dir)
	uri := "qemu+unix:///system?socket=" + sock
	l := dialUntilUp(t, uri)

	domType := "qemu"
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		domType = "kvm"
	}
	disk := filepath.Join(dir, "share", "vm.qcow2")
	if err := os.MkdirAll(filepath.Dir(disk), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	id := uuid.NewString()
	policy := types.HAPolicy{Enabled: true, Priority: 2, Rules: types.Rules{AntiAffinityGroup: "db"}}
	xml, err := domainxml.Build(domainxml.Spec{Name: "qemu-vm", UUID: id, VCPUs: 1, MemoryMiB: 64,
		DiskPath: disk, DiskFormat: "qcow2", DomainType: domType, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() { l.Destroy(ctx, id); l.Undefine(ctx, id) })
	if _, err := l.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	if s := state(t, l, id); s != types.DomainRunning {
		t.Fatalf("state after start = %s", s)
	}
	if err := l.Start(ctx, id); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	stats, err := l.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats.VCPUsAllocated != 1 || stats.MemoryAllocatedMiB != 64 || !reflect.DeepEqual(stats.AntiAffinityGroups, []string{"db"}) ||
		stats.CPUs < 1 || stats.MemoryFreeMiB > stats.MemoryTotalMiB || stats.CPULoad < 0 || stats.CPULoad > 1 {
		t.Fatalf("stats with one 1-vCPU 64 MiB VM in group db: %+v", stats)
	}
	dump, err := l.InactiveXML(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := domainxml.Parse(dump); err != nil || !reflect.DeepEqual(rec.Policy, policy) || rec.MemoryMiB != 64 {
		t.Fatalf("recorded XML parses to %+v, %v", rec, err)
	}

	// libvirtd crashes and its supervisor restarts it: the watch ends with an error, calls reconnect, the VM runs on.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watchErr := make(chan error, 1)
	events := make(chan activities.DomainEvent, 64)
	go func() {
		watchErr <- l.WatchDefinitions(wctx, func(e activities.DomainEvent) {
			select {
			case events <- e:
			default:
			}
		})
	}()
	// The watch registers asynchronously: redefine until it reports, so it surely holds the connection that dies.
	waitEvent(t, events, id, func() {
		if _, err := l.Define(ctx, xml); err != nil {
			t.Fatal(err)
		}
	})
	// The README's opt-in, `virsh metadata NAME https://vmha.dev/xmlns/ha/1 --key vmha --config --set ...`, on a
	// running domain: the QEMU driver reports it as a metadata change, and the persistent definition has it.
	drain(events)
	setMetadata(t, l, id, domainxml.Namespace, "vmha", `<ha enabled="true" priority="7"/>`)
	if e := nextDomainEvent(t, events, id); e.Kind != activities.DomainMetadataChanged {
		t.Fatalf("event after virsh metadata --config = %+v, want %s", e, activities.DomainMetadataChanged)
	}
	if dump, err := l.InactiveXML(ctx, id); err != nil {
		t.Fatal(err)
	} else if rec, err := domainxml.Parse(dump); err != nil || !rec.Policy.Enabled || rec.Policy.Priority != 7 {
		t.Fatalf("policy after virsh metadata --config = %+v, %v", rec.Policy, err)
	}
	// virsh autostart on a running HA VM, then DisableAutostart.
	err = l.do(ctx, func(c *libvirt.Connect) error {
		dom, err := lookup(c, id)
		if err != nil {
			return err
		}
		defer dom.Free()
		return dom.SetAutostart(true)
	})
	if err != nil {
		t.Fatal(err)
	}
	if wasOn, err := l.DisableAutostart(ctx, id); err != nil || !wasOn {
		t.Fatalf("DisableAutostart = %v, %v; want true, nil", wasOn, err)
	}
	if wasOn, err := l.DisableAutostart(ctx, id); err != nil || wasOn {
		t.Fatalf("second DisableAutostart = %v, %v; want false, nil", wasOn, err)
	}
	if err := syscall.Kill(daemon(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-watchErr:
		if err == nil {
			t.Fatal("watch ended without error when libvirtd died")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("watch did not notice libvirtd dying")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := l.State(ctx, id)
		if err == nil && s == types.DomainRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after libvirtd restart: state %s, %v", s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := l.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if s := state(t, l, id); s != types.DomainShutoff {
		t.Fatalf("state after destroy = %s", s)
	}
	if err := l.Undefine(ctx, id); err != nil {
		t.Fatal(err)
	}
	if s := state(t, l, id); s != types.DomainNotFound {
		t.Fatalf("state after undefine = %s", s)
	}
}

// startLibvirtd starts a private libvirtd, restarted by a shell loop when it dies, and returns its socket and a
// function finding libvirtd's current PID. --kill-child ends the namespace should the test binary die.
func startLibvirtd(t *testing.T, dir string) (string, func() int) {
	t.Helper()
	for _, sub := range []string{"etc", "run", "lib", "log", "cache", "sock"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/qemu.conf": `user = "root"
group = "root"
dynamic_ownership = 0
cgroup_controllers = [ ]
security_driver = "none"
remember_owner = 0
stdio_handler = "file"
`,
		"etc/libvirtd.conf": fmt.Sprintf(`listen_tls = 0
listen_tcp = 0
unix_sock_dir = %q
auth_unix_rw = "none"
auth_unix_ro = "none"
`, filepath.Join(dir, "sock")),
		"run.sh": fmt.Sprintf(`#!/bin/sh
set -e
for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do mkdir -p $d; done
mount --bind %[1]s/etc /etc/libvirt
mount --bind %[1]s/run /run/libvirt
mount --bind %[1]s/lib /var/lib/libvirt
mount --bind %[1]s/log /var/log/libvirt
mount --bind %[1]s/cache /var/cache/libvirt
set +e
while :; do libvirtd -f /etc/libvirt/libvirtd.conf; done
`, dir),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(dir, "libvirtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
		"tini", "--", filepath.Join(dir, "run.sh"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Killing tini, PID 1 of the namespace, kills every process in it; unshare then reaps tini and exits.
		// (Killing unshare instead would leave tini to this machine's slow orphan reaper.)
		if pid := findProcess(cmd.Process.Pid, "tini"); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		} else {
			cmd.Process.Kill()
		}
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logf.Name()); err == nil {
				t.Logf("libvirtd log:\n%s", log)
			}
		}
	})
	daemon := func() int {
		t.Helper()
		if pid := findProcess(cmd.Process.Pid, "libvirtd"); pid > 0 {
			return pid
		}
		t.Fatal("libvirtd process not found")
		return 0
	}
	return filepath.Join(dir, "sock", "libvirt-sock"), daemon
}

// findProcess walks the descendants of pid for a process named comm.
func findProcess(pid int, comm string) int {
	name, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if strings.TrimSpace(string(name)) == comm {
		return pid
	}
	children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, c := range strings.Fields(string(children)) {
		n, err := strconv.Atoi(c)
		if err != nil {
			continue
		}
		if found := findProcess(n, comm); found > 0 {
			return found
		}
	}
	return 0
}

func dialUntilUp(t *testing.T, uri string) *Libvirt {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := Open(context.Background(), uri, quiet())
		if err == nil {
			t.Cleanup(func() { l.Close() })
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not come up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
