package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"vmha/types"
)

// requireLab skips unless this process can build a lab: root, and every tool lab.sh needs installed.
func requireLab(t *testing.T) {
	t.Helper()
	if os.Getenv("VMHA_LAB") == "0" {
		t.Skip("VMHA_LAB=0: lab tests disabled")
	}
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root (network, PID and mount namespaces)")
	}
	for _, tool := range []string{"ip", "unshare", "tini", "libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "ipmi_sim", "ipmitool", "flock"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils openipmi ipmitool tini iproute2)", tool)
		}
	}
}

// TestLabLifecycle drives a two-host lab through a host crash (BMC power off), recovery of its domain on the other
// host, power on, a network cut, worker supervision and teardown.
func TestLabLifecycle(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	workerOut := t.TempDir()
	fakeWorker := filepath.Join(t.TempDir(), "vmha")
	// Stands in for the vmha binary: `share init` (lab.sh up) writes the marker and returns; the worker records its
	// arguments and environment, then runs until killed.
	writeFile(t, fakeWorker, 0o755, "#!/bin/sh\n"+
		"if [ \"$1\" = share ]; then mkdir -p \"$VMHA_SHARE_PATH/vmha\" && echo '{}' >\"$VMHA_SHARE_PATH/vmha/share.json\"; exit; fi\n"+
		"(echo \"args=$*\"; env) > \"$VMHA_TEST_OUT/$VMHA_HOST_NAME.$$.env\"\nexec sleep 1000\n")

	start := time.Now()
	l, err := Up(ctx, Options{N: 2, VMHABin: fakeWorker, Env: []string{"VMHA_TEST_OUT=" + workerOut}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up 2 hosts: %s", time.Since(start))
	t.Cleanup(func() {
		downCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.Failed() {
			logLab(t, downCtx, l)
		}
		if err := l.Down(downCtx); err != nil {
			t.Error(err)
		}
	})

	// The domain: 64 MiB, no OS, a qcow2 overlay of the lab's base image on the share.
	disk := filepath.Join(l.Dir, "share", "vm1.qcow2")
	run(t, ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", filepath.Join(l.Dir, "share", "images", "tiny.qcow2"), disk)
	xmlPath := filepath.Join(l.Dir, "share", "vm1.xml")
	writeFile(t, xmlPath, 0o644, domainXML("vm1", disk))

	mustVirsh(t, ctx, l, "hv1", "define", xmlPath)
	mustVirsh(t, ctx, l, "hv1", "start", "vm1")
	wantDomain(t, ctx, l, "hv1", "vm1", "running")
	if pids := processesWith(disk); len(pids) != 1 {
		t.Fatalf("qemu processes using %s after start on hv1: %v, want one", disk, pids)
	}

	// Power off through the BMC.
	start = time.Now()
	if err := l.PowerOff(ctx, "hv1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("power off hv1: %s", time.Since(start))
	if pids := processesWith(disk); len(pids) != 0 {
		t.Errorf("qemu of hv1 survives power off: pids %v", pids)
	}
	if got := ipmiPower(t, ctx, l, "hv1"); got != "Chassis Power is off" {
		t.Errorf("hv1 BMC after power off: %q, want %q", got, "Chassis Power is off")
	}
	if dialLibvirt(l, "hv1") == nil {
		t.Error("hv1's libvirtd port answers after power off")
	}
	states, err := l.DomainStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := states["hv1"]; ok {
		t.Errorf("DomainStates lists powered-off hv1: %v", states)
	}
	if _, ok := states["hv2"]; !ok {
		t.Errorf("DomainStates misses powered hv2: %v", states)
	}

	// The same domain, from the share, on the surviving host.
	mustVirsh(t, ctx, l, "hv2", "define", xmlPath)
	mustVirsh(t, ctx, l, "hv2", "start", "vm1")
	wantDomain(t, ctx, l, "hv2", "vm1", "running")

	start = time.Now()
	if err := l.PowerOn(ctx, "hv1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("power on hv1 (until libvirtd answers): %s", time.Since(start))
	if got := ipmiPower(t, ctx, l, "hv1"); got != "Chassis Power is on" {
		t.Errorf("hv1 BMC after power on: %q, want %q", got, "Chassis Power is on")
	}
	if out := mustVirsh(t, ctx, l, "hv1", "hostname"); strings.TrimSpace(out) != "hv1" {
		t.Errorf("hv1 hostname: %q", out)
	}
	wantDomain(t, ctx, l, "hv1", "vm1", "shut off")
	if pids := processesWith(disk); len(pids) != 1 {
		t.Errorf("qemu processes using %s after hv1 came back: %v, want only hv2's", disk, pids)
	}

	// A cut host keeps running but does not answer on the network.
	if err := l.Cut(ctx, "hv2"); err != nil {
		t.Fatal(err)
	}
	if dialLibvirt(l, "hv2") == nil {
		t.Error("cut hv2 answers on its libvirtd port")
	}
	wantDomain(t, ctx, l, "hv2", "vm1", "running")
	if err := l.Restore(ctx, "hv2"); err != nil {
		t.Fatal(err)
	}
	if err := dialLibvirt(l, "hv2"); err != nil {
		t.Errorf("restored hv2: %v", err)
	}

	// The share hidden on one host (an empty directory over it in that host's mount namespace), then shown again;
	// a file shadowed by a private copy on one host, then unshadowed. /proc/PID/root sees the host's mounts.
	inHost := func(host, path string) string {
		pid, err := os.ReadFile(filepath.Join(l.Dir, host, "power.pid"))
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Join("/proc", strings.TrimSpace(string(pid)), "root", path)
	}
	base := filepath.Join(l.Dir, "share", "images", "tiny.qcow2")
	if err := l.HideShare(ctx, "hv2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inHost("hv2", base)); err == nil {
		t.Error("hv2 sees the share after hide-share")
	}
	if _, err := os.Stat(inHost("hv1", base)); err != nil {
		t.Errorf("hv1 lost the share when hv2's was hidden: %v", err)
	}
	if err := l.HideShare(ctx, "hv2"); err == nil {
		t.Error("hide-share twice: no error")
	}
	if err := l.ShowShare(ctx, "hv2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inHost("hv2", base)); err != nil {
		t.Errorf("hv2 does not see the share after show-share: %v", err)
	}
	inode := func(path string) uint64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	if err := l.Shadow(ctx, "hv1", disk); err != nil {
		t.Fatal(err)
	}
	if inode(inHost("hv1", disk)) == inode(disk) || inode(inHost("hv2", disk)) != inode(disk) {
		t.Error("shadow: hv1 should see a copy of the disk at its path, hv2 the disk itself")
	}
	if err := l.Unshadow(ctx, "hv1", disk); err != nil {
		t.Fatal(err)
	}
	if inode(inHost("hv1", disk)) != inode(disk) {
		t.Error("unshadow: hv1 still sees the copy")
	}

	// Workers: started with the lab's environment, restarted after a crash.
	for _, host := range l.Hosts() {
		env := waitWorkerEnvs(t, workerOut, host, 1)[0]
		want := map[string]string{
			"args":                  "hypervisor",
			"VMHA_HOST_NAME":        host,
			"VMHA_LIBVIRT_URI":      "qemu:///system",
			"VMHA_SHARE_PATH":       filepath.Join(l.Dir, "share"),
			"VMHA_TEMPORAL_ADDRESS": "10.250.0.1:7233",
			"VMHA_NAMESPACE":        "vmha",
			"VMHA_TEST_OUT":         workerOut,
		}
		for k, v := range want {
			if env[k] != v {
				t.Errorf("%s worker env %s=%q, want %q", host, k, env[k], v)
			}
		}
	}
	before := len(waitWorkerEnvs(t, workerOut, "hv2", 1))
	if err := l.KillWorker(ctx, "hv2"); err != nil {
		t.Fatal(err)
	}
	waitWorkerEnvs(t, workerOut, "hv2", before+1)

	// Inventory: what vmha reads, pointing at this lab.
	invPath, err := l.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var inv types.Inventory
	data, err := os.ReadFile(invPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &inv); err != nil {
		t.Fatalf("inventory %s: %v", invPath, err)
	}
	if err := inv.Validate(); err != nil {
		t.Errorf("inventory: %v", err)
	}
	pw, _ := l.PasswordFile("hv2")
	want := types.HostSpec{Name: "hv2", Address: "10.250.0.12", LibvirtURI: "qemu+tcp://10.250.0.12/system",
		BMC:    types.BMCSpec{Address: "127.0.0.1", Port: 9624, User: "admin", PasswordFile: pw},
		Labels: map[string]string{"rack": "r2"}}
	if len(inv.Hosts) != 2 || fmt.Sprint(inv.Hosts[1]) != fmt.Sprint(want) {
		t.Errorf("inventory hosts: %+v, want 2 with hosts[1] = %+v", inv.Hosts, want)
	}
	if fi, err := os.Stat(pw); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
		t.Errorf("BMC password file %s: %v %v, want non-empty 0600", pw, fi, err)
	}

	if err := l.PowerOff(ctx, "hv9"); err == nil || !strings.Contains(err.Error(), "hv1..hv2") {
		t.Errorf("power-off hv9: %v, want an error naming hv1..hv2", err)
	}

	// Down leaves nothing: every process of the lab gone, no namespace, no bridge, no state.
	var labPIDs []string
	for _, host := range l.Hosts() {
		labPIDs = append(labPIDs, strings.Fields(run(t, ctx, "ip", "netns", "pids", "vmha-"+host))...)
	}
	labPIDs = append(labPIDs, processesWith(l.Dir)...)
	if len(labPIDs) < 8 {
		t.Errorf("lab processes before down: %v, want at least tini, init, libvirtd, worker per host and two BMCs", labPIDs)
	}
	if t.Failed() {
		logLab(t, ctx, l)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, ctx, l.Dir, labPIDs)
}

// TestDownAfterPartialUp: down cleans up a lab whose up stopped half way (no hosts booted, no BMC).
func TestDownAfterPartialUp(t *testing.T) {
	requireLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	script := defaultScript()
	lock, err := lockMachine(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "vmha-lab-")
	if err != nil {
		t.Fatal(err)
	}
	l := &Lab{Dir: dir, Script: script, N: 2, env: []string{"VMHA_LAB_DIR=" + dir}, lock: lock}
	t.Cleanup(func() { _ = l.Down(context.Background()) })

	// What up has done when it fails between the network and the first boot, plus a stray process in a host.
	writeFile(t, filepath.Join(dir, "lab.conf"), 0o644, "N=2\n")
	run(t, ctx, "ip", "link", "add", "labbr0", "type", "bridge")
	run(t, ctx, "ip", "link", "set", "labbr0", "alias", "vmha-lab:"+dir)
	run(t, ctx, "ip", "netns", "add", "vmha-hv1")
	run(t, ctx, "ip", "link", "add", "vhv1", "type", "veth", "peer", "name", "eth1", "netns", "vmha-hv1")
	stray := exec.Command("ip", "netns", "exec", "vmha-hv1", "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	go stray.Wait() // reap it once down kills it
	strayPID := fmt.Sprint(stray.Process.Pid)

	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, ctx, dir, []string{strayPID})
}

// logLab logs what explains a failure: the lab's status and the tail of every host's logs.
func logLab(t *testing.T, ctx context.Context, l *Lab) {
	t.Helper()
	status, err := l.Status(ctx)
	t.Logf("lab status (err %v):\n%s", err, status)
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "hv*", "*.log"))
	bmcLogs, _ := filepath.Glob(filepath.Join(l.Dir, "hv*", "bmc", "*.log"))
	for _, f := range append(logs, bmcLogs...) {
		data, _ := os.ReadFile(f)
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		t.Logf("--- %s:\n%s", f, data)
	}
}

func assertNothingLeft(t *testing.T, ctx context.Context, dir string, pids []string) {
	t.Helper()
	if out := run(t, ctx, "ip", "netns", "list"); strings.Contains(out, "vmha-hv") {
		t.Errorf("namespaces left after down:\n%s", out)
	}
	if out, err := exec.CommandContext(ctx, "ip", "link", "show", "labbr0").CombinedOutput(); err == nil {
		t.Errorf("labbr0 left after down: %s", out)
	}
	if out := run(t, ctx, "ip", "-o", "link", "show"); regexp.MustCompile(`\bvhv\d+`).MatchString(out) {
		t.Errorf("veths left after down:\n%s", out)
	}
	var alive []string
	for _, pid := range pids {
		if processAlive(pid) {
			alive = append(alive, pid+" "+cmdline(pid))
		}
	}
	if len(alive) > 0 {
		t.Errorf("lab processes alive after down: %v", alive)
	}
	if left := processesWith(dir); len(left) > 0 {
		t.Errorf("processes naming %s after down: %v", dir, left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("state directory %s after down: %v", dir, err)
	}
}

func domainXML(name, disk string) string {
	domType := "qemu"
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		domType = "kvm"
	}
	return fmt.Sprintf(`<domain type='%s'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
`, domType, name, disk)
}

func mustVirsh(t *testing.T, ctx context.Context, l *Lab, host string, args ...string) string {
	t.Helper()
	out, err := l.Virsh(ctx, host, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func wantDomain(t *testing.T, ctx context.Context, l *Lab, host, name, state string) {
	t.Helper()
	states, err := l.DomainStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := states[host][name]; got != state {
		t.Errorf("%s on %s: state %q, want %q (all: %v)", name, host, got, state, states)
	}
}

func ipmiPower(t *testing.T, ctx context.Context, l *Lab, host string) string {
	t.Helper()
	port, err := l.BMCPort(host)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := l.PasswordFile(host)
	return strings.TrimSpace(run(t, ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", fmt.Sprint(port),
		"-U", "admin", "-f", pw, "chassis", "power", "status"))
}

func dialLibvirt(l *Lab, host string) error {
	addr, err := l.Address(host)
	if err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(addr, "16509"), time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// waitWorkerEnvs waits until at least n workers of host have recorded their start, and returns their records.
func waitWorkerEnvs(t *testing.T, dir, host string, n int) []map[string]string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		files, _ := filepath.Glob(filepath.Join(dir, host+".*.env"))
		if len(files) >= n {
			var envs []map[string]string
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				env := map[string]string{}
				for _, line := range strings.Split(string(data), "\n") {
					if k, v, ok := strings.Cut(line, "="); ok {
						env[k] = v
					}
				}
				envs = append(envs, env)
			}
			return envs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d worker starts recorded in %s, want %d", host, len(files), dir, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesWith lists live processes whose command line mentions s.
func processesWith(s string) []string {
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := e.Name()
		if pid[0] < '0' || pid[0] > '9' || pid == fmt.Sprint(os.Getpid()) {
			continue
		}
		if strings.Contains(cmdline(pid), s) && processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid string) string {
	data, _ := os.ReadFile("/proc/" + pid + "/cmdline")
	return strings.ReplaceAll(string(data), "\x00", " ")
}

// processAlive: the process exists and is not a zombie (the machine's init reaps orphans late).
func processAlive(pid string) bool {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	rest := string(data[strings.LastIndexByte(string(data), ')')+1:])
	return !strings.HasPrefix(rest, " Z") && !strings.HasPrefix(rest, " X")
}

func writeFile(t *testing.T, path string, mode os.FileMode, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, ctx context.Context, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
