package lab_test

// The issue 13 ("never lost") and issue 6 ("never twice") scenarios, and the watcher every scenario runs.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"vmha/activities"
	"vmha/types"
)

// copyWatch is the first moment a watcher saw one VM running on two hosts.
type copyWatch struct {
	violation atomic.Pointer[string]
}

// scenario runs one lab scenario as a subtest while a watcher checks every powered host with libvirt every
// 200 ms and fails the scenario the first moment one VM (by UUID) runs on two hosts. Every wait of the scenario
// (eventually) stops at once when that happened.
func (w *world) scenario(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		stop := w.watchCopies(t)
		defer stop()
		f(t)
	})
}

func (w *world) watchCopies(t *testing.T) func() {
	w.copies.violation.Store(nil)
	stop, done := make(chan struct{}), make(chan struct{})
	var polls, maxGap atomic.Int64
	go func() {
		defer close(done)
		conns := map[string]*libvirt.Connect{}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			running := map[string][]string{}
			names := map[string]string{}
			for _, h := range w.lab.Hosts() {
				c := conns[h]
				if !w.lab.Ready(h) {
					if c != nil {
						c.Close()
						delete(conns, h)
					}
					continue
				}
				if c == nil {
					var err error
					if c, err = libvirt.NewConnect(w.lab.LocalURI(h)); err != nil {
						continue
					}
					conns[h] = c
				}
				doms, err := c.ListAllDomains(libvirt.CONNECT_LIST_DOMAINS_RUNNING)
				if err != nil {
					c.Close()
					delete(conns, h)
					continue
				}
				for _, d := range doms {
					if uuid, err := d.GetUUIDString(); err == nil {
						running[uuid] = append(running[uuid], h)
						names[uuid], _ = d.GetName()
					}
					d.Free()
				}
			}
			now := time.Now()
			if gap := now.Sub(last).Milliseconds(); gap > maxGap.Load() {
				maxGap.Store(gap)
			}
			last = now
			polls.Add(1)
			for uuid, hosts := range running {
				if len(hosts) > 1 && w.copies.violation.Load() == nil {
					sort.Strings(hosts)
					msg := fmt.Sprintf("%s (%s) runs on %v at once, seen %s", names[uuid], uuid, hosts, now.Format("15:04:05.000"))
					w.copies.violation.Store(&msg)
					t.Errorf("two copies: %s", msg)
				}
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		t.Logf("copy watcher: %d polls of every powered host, longest gap %d ms", polls.Load(), maxGap.Load())
	}
}

// checkCopies fails the scenario if the watcher saw two copies.
func (w *world) checkCopies(t *testing.T) {
	t.Helper()
	if v := w.copies.violation.Load(); v != nil {
		t.Fatalf("two copies ran: %s", *v)
	}
}

// ---------- helpers ----------

// running maps every running VM to its host; two copies fail the test.
func (w *world) running(t *testing.T) map[string]string {
	states, err := w.lab.DomainStates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	at := map[string]string{}
	for host, doms := range states {
		for vm, s := range doms {
			if s != "running" {
				continue
			}
			if other, ok := at[vm]; ok {
				t.Fatalf("%s runs on %s and %s", vm, other, host)
			}
			at[vm] = host
		}
	}
	return at
}

// vmsOn lists the VMs running on host.
func vmsOn(at map[string]string, host string) []string {
	var vms []string
	for vm, h := range at {
		if h == host {
			vms = append(vms, vm)
		}
	}
	sort.Strings(vms)
	return vms
}

// byLoad orders hosts by how many VMs run there, most first (ties by name).
func (w *world) byLoad(t *testing.T) []string {
	at := w.running(t)
	hosts := w.lab.Hosts()
	sort.SliceStable(hosts, func(i, j int) bool { return len(vmsOn(at, hosts[i])) > len(vmsOn(at, hosts[j])) })
	return hosts
}

// waitRunningOff waits until each VM runs exactly once, on none of the given hosts.
func (w *world) waitRunningOff(t *testing.T, d time.Duration, vms []string, not ...string) map[string]string {
	var at map[string]string
	w.eventually(t, d, fmt.Sprintf("%v running off %v", vms, not), func() error {
		at = w.running(t)
		for _, vm := range vms {
			h, ok := at[vm]
			if !ok {
				return fmt.Errorf("%s runs nowhere", vm)
			}
			for _, n := range not {
				if h == n {
					return fmt.Errorf("%s runs on %s", vm, h)
				}
			}
		}
		return nil
	})
	return at
}

// hold checks f every 200 ms for d: a condition that must stay true.
func (w *world) hold(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		w.checkCopies(t)
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (w *world) powerOff(t *testing.T, hosts ...string) time.Time {
	at := time.Now()
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.lab.PowerOff(context.Background(), h); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return at
}

// powerOnAll powers every host that is off back on and waits until all are healthy.
func (w *world) powerOnAll(t *testing.T) {
	var wg sync.WaitGroup
	for _, h := range w.lab.Hosts() {
		if w.lab.Ready(h) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.lab.PowerOn(context.Background(), h); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	w.waitHealthy(t, w.lab.Hosts()...)
}

func (w *world) catalogDir() string { return filepath.Join(w.lab.Dir, "share", "vmha", "catalog") }

// catalogLookup reads an entry; ok is false while it does not exist or does not parse.
func (w *world) catalogLookup(uuid string) (activities.CatalogEntry, bool) {
	var e activities.CatalogEntry
	b, err := os.ReadFile(filepath.Join(w.catalogDir(), uuid+".json"))
	if err != nil || json.Unmarshal(b, &e) != nil {
		return e, false
	}
	return e, true
}

func (w *world) waitCatalog(t *testing.T, d time.Duration, uuid, what string, f func(activities.CatalogEntry) error) {
	w.eventually(t, d, "catalog entry "+uuid+" "+what, func() error {
		e, ok := w.catalogLookup(uuid)
		if !ok {
			return fmt.Errorf("no entry")
		}
		return f(e)
	})
}

func newUUID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// domainType is what the lab's QEMU can run here.
func domainType() string {
	if _, err := os.Stat("/dev/kvm"); err == nil {
		return "kvm"
	}
	return "qemu"
}

// newDisk makes a qcow2 overlay of the lab's base image on the share.
func (w *world) newDisk(t *testing.T, name string) string {
	disk := filepath.Join(w.lab.Dir, "share", "images", name+".qcow2")
	base := filepath.Join(w.lab.Dir, "share", "images", "tiny.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create %s: %v\n%s", disk, err, out)
	}
	return disk
}

func plainDomainXML(name, uuid, disk string) string {
	return fmt.Sprintf(`<domain type='%s'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
  </devices>
</domain>
`, domainType(), name, uuid, vmMemoryMiB, disk)
}

func (w *world) virsh(t *testing.T, host string, args ...string) string {
	t.Helper()
	out, err := w.lab.Virsh(context.Background(), host, args...)
	if err != nil {
		t.Fatalf("virsh %s on %s: %v", strings.Join(args, " "), host, err)
	}
	return out
}

// virshVM defines and starts a VM with virsh alone on host, as an operator would, and returns its UUID. With
// autostart, `virsh autostart` is set too. It is not HA until optIn.
func (w *world) virshVM(t *testing.T, host, name string, autostart bool) string {
	uuid := newUUID(t)
	xmlPath := filepath.Join(w.dir, name+".xml")
	if err := os.WriteFile(xmlPath, []byte(plainDomainXML(name, uuid, w.newDisk(t, name))), 0o644); err != nil {
		t.Fatal(err)
	}
	w.virsh(t, host, "define", xmlPath)
	if autostart {
		w.virsh(t, host, "autostart", name)
	}
	w.virsh(t, host, "start", name)
	return uuid
}

const haNS = "https://vmha.dev/xmlns/ha/1"

// optIn makes a VM HA with `virsh metadata ... --config` alone and waits for its catalog entry.
func (w *world) optIn(t *testing.T, host, name, uuid string) {
	w.virsh(t, host, "metadata", name, haNS, "--key", "vmha", "--config", "--set", `<ha enabled="true"/>`)
	w.waitCatalog(t, 10*time.Second, uuid, "owned by "+host, func(e activities.CatalogEntry) error {
		if e.Owner != host || !e.Policy.Enabled || e.Phase != types.PhaseOwned {
			return fmt.Errorf("owner %s enabled %t phase %q", e.Owner, e.Policy.Enabled, e.Phase)
		}
		return nil
	})
}

// deleteVM removes a scenario's VM: opted out first (so no keeper records it again), then destroyed and undefined
// on every host, its catalog entry and disk removed.
func (w *world) deleteVM(t *testing.T, name, uuid string) {
	states, err := w.lab.DomainStates(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for host, doms := range states {
		if _, ok := doms[name]; !ok {
			continue
		}
		_, _ = w.lab.Virsh(context.Background(), host, "metadata", name, haNS, "--key", "vmha", "--config", "--set", `<ha enabled="false"/>`)
	}
	if _, ok := w.catalogLookup(uuid); ok {
		w.waitCatalog(t, 10*time.Second, uuid, "opted out", func(e activities.CatalogEntry) error {
			if e.Policy.Enabled {
				return fmt.Errorf("still HA")
			}
			return nil
		})
	}
	for host, doms := range states {
		if _, ok := doms[name]; !ok {
			continue
		}
		_, _ = w.lab.Virsh(context.Background(), host, "destroy", name)
		_, _ = w.lab.Virsh(context.Background(), host, "undefine", name)
	}
	_ = os.Remove(filepath.Join(w.catalogDir(), uuid+".json"))
	_ = os.Remove(filepath.Join(w.lab.Dir, "share", "images", name+".qcow2"))
}

// events lists the webhook events of a kind since a time that satisfy f.
func (h *webhook) find(kind types.EventKind, since time.Time, f func(types.Event) bool) []types.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []types.Event
	for _, e := range h.events {
		if e.Kind == kind && !e.At.Before(since) && (f == nil || f(e.Event)) {
			out = append(out, e.Event)
		}
	}
	return out
}

func (w *world) hostRecoveries(t *testing.T, host string, since time.Time) []string {
	return w.workflows(t, fmt.Sprintf("WorkflowType = '%s' AND %s = '%s' AND StartTime > '%s'", types.HostRecoveryWorkflow,
		types.HostAttr.GetName(), host, since.UTC().Format(time.RFC3339Nano)))
}

// applyHosts applies an inventory of the given lab hosts, each with the memory capacity memory(host).
func (w *world) applyHosts(t *testing.T, hosts []string, memory func(string) int) {
	var b strings.Builder
	b.WriteString("hosts:\n")
	for _, h := range hosts {
		addr, _ := w.lab.Address(h)
		port, _ := w.lab.BMCPort(h)
		pw, _ := w.lab.PasswordFile(h)
		fmt.Fprintf(&b, "  - name: %s\n    address: %s\n    libvirtURI: qemu+tcp://%s/system\n"+
			"    bmc: {address: 127.0.0.1, port: %d, user: admin, passwordFile: %s}\n"+
			"    labels: {rack: r%s}\n    capacity: {memoryMiB: %d}\n", h, addr, addr, port, pw, strings.TrimPrefix(h, "hv"), memory(h))
	}
	path := filepath.Join(w.dir, fmt.Sprintf("inventory-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("vmha apply: %s", strings.TrimSpace(w.vmha(t, "apply", "-f", path)))
}

func fullCapacity(string) int { return hostMemoryMiB }

func temporalCLI(t *testing.T) string {
	cli := os.Getenv("VMHA_TEMPORAL_CLI")
	if cli == "" {
		cli = "../../bin/tools/temporal"
	}
	if _, err := os.Stat(cli); err != nil {
		t.Skipf("Temporal CLI %s missing (make installs it)", cli)
	}
	return cli
}

func (w *world) workerLogCount(host, text string) int {
	b, _ := os.ReadFile(filepath.Join(w.lab.Dir, host, "worker.log"))
	return strings.Count(string(b), text)
}

// ---------- issue 13: never lost ----------

// 13a. The share is not mounted on one survivor (an empty directory over the share path in its mount namespace),
// then another host loses power: every VM comes back on hosts that see the share; the unmounted host says so in
// its log and is no target.
func (w *world) shareUnmountedOnSurvivor(t *testing.T) {
	hosts := w.byLoad(t)
	x, u := hosts[0], hosts[len(hosts)-1] // u: the emptiest survivor, the scheduler's favourite
	before := w.running(t)
	xVMs, uVMs := vmsOn(before, x), vmsOn(before, u)
	said := w.workerLogCount(u, "share not mounted")
	if err := w.lab.HideShare(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := w.lab.ShowShare(context.Background(), u); err != nil {
			t.Error(err)
		}
	}()
	w.eventually(t, 15*time.Second, u+"'s worker saying the share is not mounted", func() error {
		if w.workerLogCount(u, "share not mounted") == said {
			return fmt.Errorf("not said yet")
		}
		return nil
	})
	t.Logf("%s runs %v and loses power; %s (share hidden) runs %v", x, xVMs, u, uVMs)
	w.powerOff(t, x)
	after := w.waitRunningOff(t, 60*time.Second, xVMs, x, u)
	for _, vm := range uVMs {
		if after[vm] != u {
			t.Fatalf("%s moved off %s (now %q)", vm, u, after[vm])
		}
	}
	w.waitState(t, 15*time.Second, x, types.HostRecovered)
	t.Logf("VMs after: %v", after)
	if err := w.lab.ShowShare(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	w.powerOnAll(t)
}

// 13b. A stray garbage.json and a truncated entry in the catalog, then a power loss: every valid VM comes back,
// both files are reported (catalog.unreadable), and the host is recovery-failed while they are there.
func (w *world) catalogGarbage(t *testing.T) {
	x := w.byLoad(t)[0]
	xVMs := vmsOn(w.running(t), x)
	garbage := filepath.Join(w.catalogDir(), "garbage.json")
	truncatedUUID := newUUID(t)
	truncated := filepath.Join(w.catalogDir(), truncatedUUID+".json")
	defer os.Remove(garbage)
	defer os.Remove(truncated)
	// A real entry, renamed, cut in the middle: as a host crash during a non-atomic copy would leave it.
	e := w.catalogEntry(t, w.uuidOf(t, x, xVMs[0]))
	e.UUID, e.Name = truncatedUUID, "truncated"
	b, _ := json.MarshalIndent(e, "", "  ")
	if err := os.WriteFile(truncated, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(garbage, []byte("notes: not a catalog entry\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	since := w.powerOff(t, x)
	w.waitRunningOff(t, 60*time.Second, xVMs, x)
	reported := func(name string) bool {
		return len(w.hooks.find(types.EventCatalogUnreadable, since, func(e types.Event) bool { return strings.Contains(e.Reason, name) })) > 0
	}
	w.eventually(t, 20*time.Second, "both files reported", func() error {
		for _, f := range []string{"garbage.json", truncatedUUID + ".json"} {
			if !reported(f) {
				return fmt.Errorf("no catalog.unreadable event naming %s", f)
			}
		}
		return nil
	})
	for _, e := range w.hooks.find(types.EventCatalogUnreadable, since, nil) {
		t.Logf("event %s: %s", e.Kind, e.Reason)
	}
	w.waitState(t, 20*time.Second, x, types.HostRecoveryFailed)
	w.hold(t, 3*time.Second, x+" recovery-failed while the files are there", func() error {
		if s := w.hostState(x); s != types.HostRecoveryFailed {
			return fmt.Errorf("%s is %s", x, s)
		}
		return nil
	})
	os.Remove(garbage)
	os.Remove(truncated)
	// The next round (backoff up to 30 s) finds a clean catalog and nothing left behind.
	w.waitState(t, 45*time.Second, x, types.HostRecovered)
	w.powerOnAll(t)
}

// 13c. No capacity left when a host dies (the survivors' capacity set below what one more VM needs): the host is
// recovery-failed and its VMs wait; capacity raised again by re-applying the inventory brings them back by
// themselves within a minute.
func (w *world) noCapacity(t *testing.T) {
	x := w.byLoad(t)[0]
	xVMs := vmsOn(w.running(t), x)
	w.applyHosts(t, w.lab.Hosts(), func(h string) int {
		if h == x {
			return hostMemoryMiB
		}
		return vmMemoryMiB / 2
	})
	restored := false
	defer func() {
		if !restored {
			w.applyHosts(t, w.lab.Hosts(), fullCapacity)
		}
	}()
	w.waitHealthy(t, w.lab.Hosts()...)
	since := w.powerOff(t, x)
	w.waitState(t, 40*time.Second, x, types.HostRecoveryFailed)
	w.eventually(t, 20*time.Second, "vm.recovery.failed naming the lack of capacity", func() error {
		if len(w.hooks.find(types.EventRecoveryFailed, since, func(e types.Event) bool {
			return e.VM == xVMs[0] && strings.Contains(e.Reason, "MiB free")
		})) == 0 {
			return fmt.Errorf("none")
		}
		return nil
	})
	for _, e := range w.hooks.find(types.EventRecoveryFailed, since, func(e types.Event) bool { return e.VM == xVMs[0] })[:1] {
		t.Logf("vm.recovery.failed %s: %s", e.VM, e.Reason)
	}
	if at := w.running(t); len(vmsOn(at, x)) > 0 || func() bool {
		for _, vm := range xVMs {
			if _, ok := at[vm]; ok {
				return true
			}
		}
		return false
	}() {
		t.Fatalf("a VM of %s runs although no host had room: %v", x, at)
	}
	raised := time.Now()
	w.applyHosts(t, w.lab.Hosts(), fullCapacity)
	restored = true
	w.waitRunningOff(t, 60*time.Second, xVMs, x)
	t.Logf("%v running again %.1fs after the capacity was raised", xVMs, time.Since(raised).Seconds())
	w.waitState(t, 40*time.Second, x, types.HostRecovered)
	w.powerOnAll(t)
}

// 13d. A host retired and re-applied after an incident, then powered off: its VMs come back, under recovery IDs
// that do not collide with the first incident's.
func (w *world) retiredAndReapplied(t *testing.T) {
	hosts := w.byLoad(t)
	x := hosts[len(hosts)-1]
	first := time.Now()
	w.powerOff(t, x)
	w.waitRunningOff(t, 60*time.Second, vmsOn(w.running(t), x), x)
	w.waitState(t, 30*time.Second, x, types.HostRecovered)
	w.powerOnAll(t)
	w.eventually(t, 20*time.Second, "a first recovery of "+x, func() error {
		if len(w.hostRecoveries(t, x, first)) == 0 {
			return fmt.Errorf("none")
		}
		return nil
	})
	// Wait until the catalog gives x nothing (its stale definitions dropped), then retire it and add it back.
	var others []string
	for _, h := range w.lab.Hosts() {
		if h != x {
			others = append(others, h)
		}
	}
	w.eventually(t, 30*time.Second, "the catalog giving "+x+" nothing", func() error {
		files, _ := filepath.Glob(filepath.Join(w.catalogDir(), "*.json"))
		for _, f := range files {
			if e, ok := w.catalogLookup(strings.TrimSuffix(filepath.Base(f), ".json")); ok && e.Owner == x {
				return fmt.Errorf("%s owns %s", x, e.Name)
			}
		}
		return nil
	})
	w.applyHosts(t, others, fullCapacity)
	w.eventually(t, 10*time.Second, x+"'s monitor ended", func() error {
		resp, err := w.client.DescribeWorkflowExecution(context.Background(), types.HostMonitorID(x), "")
		if err != nil {
			return err
		}
		if resp.GetWorkflowExecutionInfo().GetCloseTime() == nil {
			return fmt.Errorf("still running")
		}
		return nil
	})
	w.applyHosts(t, w.lab.Hosts(), fullCapacity)
	w.waitHealthy(t, x)
	uuid := w.virshVM(t, x, "retvm", false)
	defer w.deleteVM(t, "retvm", uuid)
	w.optIn(t, x, "retvm", uuid)
	xVMs := vmsOn(w.running(t), x)
	second := w.powerOff(t, x)
	w.waitRunningOff(t, 60*time.Second, xVMs, x)
	w.waitState(t, 30*time.Second, x, types.HostRecovered)
	all := w.hostRecoveries(t, x, first)
	again := w.hostRecoveries(t, x, second)
	if len(again) == 0 || len(all) <= len(again) {
		t.Fatalf("recoveries of %s: all %v, after the re-apply %v", x, all, again)
	}
	t.Logf("recoveries of %s: %v (after the re-apply: %v)", x, all, again)
	w.powerOnAll(t)
}

// 13e. A `fenced` signal sent with the Temporal CLI to a healthy host's monitor: the BMC says the power is on,
// so nothing moves, and a host.alert reaches the operator.
func (w *world) fencedSignalToHealthyHost(t *testing.T) {
	cli := temporalCLI(t)
	x := w.byLoad(t)[0]
	xVMs := vmsOn(w.running(t), x)
	since := time.Now()
	// Only a controller may signal "fenced": this is a controller's bug (or a stolen controller key), not an
	// operator's typo, which the authorizer refuses.
	out, err := exec.Command(cli, w.cliArgs(w.controllerCert, "workflow", "signal",
		"--workflow-id", types.HostMonitorID(x), "--name", activities.SignalFenced,
		"--input", `{"by":"lab scenario 13e (a typo)","reason":"wrong host"}`)...).CombinedOutput()
	if err != nil {
		t.Fatalf("temporal workflow signal: %v\n%s", err, out)
	}
	w.eventually(t, 15*time.Second, "a host.alert about "+x, func() error {
		if len(w.hooks.find(types.EventHostAlert, since, func(e types.Event) bool { return e.Host == x })) == 0 {
			return fmt.Errorf("none")
		}
		return nil
	})
	for _, e := range w.hooks.find(types.EventHostAlert, since, func(e types.Event) bool { return e.Host == x }) {
		t.Logf("host.alert %s: %s", e.Host, e.Reason)
	}
	w.hold(t, 5*time.Second, "nothing moves", func() error {
		at := w.running(t)
		for _, vm := range xVMs {
			if at[vm] != x {
				return fmt.Errorf("%s on %q", vm, at[vm])
			}
		}
		if s := w.hostState(x); s != types.HostHealthy {
			return fmt.Errorf("%s is %s", x, s)
		}
		return nil
	})
	if ids := w.hostRecoveries(t, x, since); len(ids) != 0 {
		t.Fatalf("a recovery of healthy %s started: %v", x, ids)
	}
}

// ---------- issue 6: never twice ----------

// 6a. A VM defined and started with virsh, opted in with `virsh metadata --config` alone, is recovered after its
// host's power loss.
func (w *world) virshOptIn(t *testing.T) {
	hosts := w.byLoad(t)
	h := hosts[len(hosts)-1]
	uuid := w.virshVM(t, h, "optin", false)
	defer w.deleteVM(t, "optin", uuid)
	w.optIn(t, h, "optin", uuid)
	entry, _ := w.catalogLookup(uuid)
	w.powerOff(t, h)
	at := w.waitRunningOff(t, 60*time.Second, []string{"optin"}, h)
	w.waitCatalog(t, 10*time.Second, uuid, "moved", func(e activities.CatalogEntry) error {
		if e.Owner != at["optin"] || e.Phase != types.PhaseOwned || e.Generation <= entry.Generation {
			return fmt.Errorf("owner %s phase %q generation %d", e.Owner, e.Phase, e.Generation)
		}
		return nil
	})
	w.powerOnAll(t)
}

// 6b. The same VM with `virsh autostart` on: the keeper turns autostart off before anything happens; power-off,
// recovery, power-on of the old host: exactly one copy runs at all times, and the old host starts nothing.
func (w *world) virshAutostart(t *testing.T) {
	hosts := w.byLoad(t)
	h := hosts[len(hosts)-1]
	link := filepath.Join(w.lab.Dir, h, "etc", "qemu", "autostart", "auto.xml")
	uuid := w.virshVM(t, h, "auto", true)
	defer w.deleteVM(t, "auto", uuid)
	if _, err := os.Lstat(link); err != nil {
		t.Fatalf("virsh autostart left no link: %v", err)
	}
	w.optIn(t, h, "auto", uuid)
	w.eventually(t, 10*time.Second, "autostart turned off", func() error {
		if _, err := os.Lstat(link); err == nil {
			return fmt.Errorf("%s still there", link)
		}
		return nil
	})
	if out := w.virsh(t, h, "dominfo", "auto"); !regexpMatch(`Autostart:\s+disable`, out) {
		t.Fatalf("dominfo after opt-in:\n%s", out)
	}
	w.powerOff(t, h)
	at := w.waitRunningOff(t, 60*time.Second, []string{"auto"}, h)
	y := at["auto"]
	w.powerOnAll(t)
	w.hold(t, 5*time.Second, "one copy, on "+y, func() error {
		if at := w.running(t); at["auto"] != y {
			return fmt.Errorf("auto runs on %q", at["auto"])
		}
		return nil
	})
	w.eventually(t, 15*time.Second, "stale definition dropped on "+h, func() error {
		states, err := w.lab.DomainStates(context.Background())
		if err != nil {
			return err
		}
		if s, ok := states[h]["auto"]; ok {
			return fmt.Errorf("still defined on %s (%s)", h, s)
		}
		return nil
	})
}

// migrate live-migrates vm from a to b with virsh, as an operator would.
func (w *world) migrate(t *testing.T, vm, a, b string, undefineSource bool) {
	addr, _ := w.lab.Address(b)
	args := []string{"migrate", "--live", "--unsafe", "--persistent"}
	if undefineSource {
		args = append(args, "--undefinesource")
	}
	args = append(args, vm, "qemu+tcp://"+addr+"/system", "--migrateuri", "tcp://"+addr)
	w.virsh(t, a, args...)
}

// 6c. Live migration with --persistent, then with --undefinesource: the catalog owner follows; the old host's
// power loss moves nothing; the new host's brings the VM back once.
func (w *world) liveMigration(t *testing.T) {
	hosts := w.byLoad(t)
	a, b := hosts[0], hosts[len(hosts)-1]
	uuid := w.virshVM(t, a, "mig", false)
	defer w.deleteVM(t, "mig", uuid)
	w.optIn(t, a, "mig", uuid)
	for _, undefineSource := range []bool{false, true} {
		entry, _ := w.catalogLookup(uuid)
		t.Logf("migrate mig %s -> %s (undefinesource %t), generation %d", a, b, undefineSource, entry.Generation)
		w.migrate(t, "mig", a, b, undefineSource)
		w.waitCatalog(t, 10*time.Second, uuid, "owned by "+b, func(e activities.CatalogEntry) error {
			if e.Owner != b || e.Phase != types.PhaseOwned || e.Generation != entry.Generation+1 {
				return fmt.Errorf("owner %s phase %q generation %d", e.Owner, e.Phase, e.Generation)
			}
			return nil
		})
		if undefineSource {
			// The source's keeper saw the VM undefined there: its entry must stay (the grace before an undefined
			// VM is forgotten is 15 s), now owned by the new host.
			w.hold(t, 17*time.Second, "mig stays HA, owned by "+b, func() error {
				if e, ok := w.catalogLookup(uuid); !ok || e.Owner != b || !e.Policy.Enabled {
					return fmt.Errorf("catalog entry %+v (exists %t)", e.VMRecord, ok)
				}
				return nil
			})
		}
		recs := len(w.recoveriesOfVM(t, uuid))
		// The old host dies: nothing moves.
		w.powerOff(t, a)
		w.waitState(t, 30*time.Second, a, types.HostRecovered)
		w.hold(t, 2*time.Second, "mig stays on "+b, func() error {
			if at := w.running(t); at["mig"] != b {
				return fmt.Errorf("mig runs on %q", at["mig"])
			}
			return nil
		})
		if n := len(w.recoveriesOfVM(t, uuid)); n != recs {
			t.Fatalf("a recovery of mig ran when its old host %s died", a)
		}
		w.powerOnAll(t)
		// A leftover definition on the old host (--persistent alone) is dropped when it comes back.
		w.eventually(t, 15*time.Second, "no definition of mig left on "+a, func() error {
			states, err := w.lab.DomainStates(context.Background())
			if err != nil {
				return err
			}
			if s, ok := states[a]["mig"]; ok {
				return fmt.Errorf("defined on %s (%s)", a, s)
			}
			return nil
		})
		// The new host dies: the VM comes back once.
		w.powerOff(t, b)
		at := w.waitRunningOff(t, 60*time.Second, []string{"mig"}, b)
		if n := len(w.recoveriesOfVM(t, uuid)); n != recs+1 {
			t.Fatalf("want one RecoverVM of mig after %s died, got %d", b, n-recs)
		}
		w.waitCatalog(t, 10*time.Second, uuid, "owned by "+at["mig"], func(e activities.CatalogEntry) error {
			if e.Owner != at["mig"] || e.Phase != types.PhaseOwned {
				return fmt.Errorf("owner %s phase %q", e.Owner, e.Phase)
			}
			return nil
		})
		w.powerOnAll(t)
		// Next round: migrate from where it runs now to another host.
		a = at["mig"]
		for _, h := range w.byLoad(t) {
			if h != a {
				b = h
			}
		}
	}
}

// 6d. A target whose start's answer is lost and whose clean-up fails: its worker is killed the moment the VM's
// QEMU has started there (a libvirt hook armed on every survivor) and kept down. The recovery must not try
// another host while that copy may run; once the worker is back, the VM runs exactly once, committed.
func (w *world) lostStartNoSecondCopy(t *testing.T) {
	x := w.byLoad(t)[0]
	xVMs := vmsOn(w.running(t), x)
	vm := xVMs[0]
	uuid := w.uuidOf(t, x, vm)
	var armed []string
	for _, h := range w.lab.Hosts() {
		if h != x {
			if err := w.lab.HoldWorker(context.Background(), h, vm); err != nil {
				t.Fatal(err)
			}
			armed = append(armed, h)
		}
	}
	defer func() {
		for _, h := range armed {
			_ = w.lab.ReleaseWorker(context.Background(), h)
		}
	}()
	since := w.powerOff(t, x)
	var target string
	w.eventually(t, 30*time.Second, "the hook to kill a target's worker", func() error {
		for _, h := range armed {
			if w.workerLogCount(h, "lab hook: "+vm+" started") > 0 {
				target = h
				return nil
			}
		}
		return fmt.Errorf("no target started %s yet", vm)
	})
	for _, h := range armed {
		if h != target {
			_ = w.lab.ReleaseWorker(context.Background(), h)
		}
	}
	t.Logf("%s started on %s, whose worker is now down", vm, target)
	w.eventually(t, 90*time.Second, "vm.recovery.failed for "+vm, func() error {
		if len(w.hooks.find(types.EventRecoveryFailed, since, func(e types.Event) bool { return e.VM == vm })) == 0 {
			return fmt.Errorf("none")
		}
		return nil
	})
	for _, e := range w.hooks.find(types.EventRecoveryFailed, since, func(e types.Event) bool { return e.VM == vm })[:1] {
		t.Logf("vm.recovery.failed %s: %s", e.VM, e.Reason)
	}
	w.waitState(t, 10*time.Second, x, types.HostRecoveryFailed)
	w.hold(t, 10*time.Second, vm+" on "+target+" only, defined nowhere else", func() error {
		states, err := w.lab.DomainStates(context.Background())
		if err != nil {
			return err
		}
		for h, doms := range states {
			if s, ok := doms[vm]; ok && h != target {
				return fmt.Errorf("%s defined on %s too (%s)", vm, h, s)
			}
		}
		if s := states[target][vm]; s != "running" {
			return fmt.Errorf("%s is %q on %s", vm, s, target)
		}
		return nil
	})
	released := time.Now()
	if err := w.lab.ReleaseWorker(context.Background(), target); err != nil {
		t.Fatal(err)
	}
	w.waitCatalog(t, 90*time.Second, uuid, "committed", func(e activities.CatalogEntry) error {
		if e.Phase != types.PhaseOwned || e.Owner == x {
			return fmt.Errorf("owner %s phase %q", e.Owner, e.Phase)
		}
		if h := w.running(t)[vm]; h != e.Owner {
			return fmt.Errorf("owner %s but runs on %q", e.Owner, h)
		}
		return nil
	})
	e, _ := w.catalogLookup(uuid)
	t.Logf("%s committed to %s %.1fs after the worker came back", vm, e.Owner, time.Since(released).Seconds())
	w.waitRunningOff(t, 30*time.Second, xVMs, x)
	w.waitState(t, 40*time.Second, x, types.HostRecovered)
	w.powerOnAll(t)
}

// 6e. With virtlockd, a forced start of a running VM's definition on another host fails with a lease error. The
// VM's disk is shadowed on the second host by a copy at the same path, so QEMU's own image lock (one kernel here)
// sees another file and only virtlockd's lease, keyed by the path, can refuse.
func (w *world) leaseRefusesSecondStart(t *testing.T) {
	hosts := w.byLoad(t)
	a, b := hosts[0], hosts[len(hosts)-1]
	vm := vmsOn(w.running(t), a)[0]
	uuid := w.uuidOf(t, a, vm)
	disk := ""
	for _, f := range strings.Fields(w.virsh(t, a, "domblklist", vm)) {
		if strings.HasPrefix(f, "/") {
			disk = f
		}
	}
	xml := w.virsh(t, a, "dumpxml", "--inactive", vm)
	xmlPath := filepath.Join(w.dir, "forced-"+vm+".xml")
	if err := os.WriteFile(xmlPath, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := w.lab.Shadow(context.Background(), b, disk); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := w.lab.Unshadow(context.Background(), b, disk); err != nil {
			t.Error(err)
		}
	}()
	// virsh create: define and start in one call. A separate define would race the keeper on b, which drops a
	// definition of a VM the catalog gives to another host before anyone can start it.
	out, err := w.lab.Virsh(context.Background(), b, "create", xmlPath)
	if err == nil {
		t.Fatalf("virsh create of running %s on %s succeeded: %s", vm, b, out)
	}
	msg := err.Error()
	t.Logf("forced start on %s refused: %s", b, msg[max(strings.Index(msg, "error:"), 0):])
	// virtlockd's refusal: "resource busy: Lockspace resource '<sha256 of the disk path>' is locked".
	if !strings.Contains(msg, "Lockspace resource") || !strings.Contains(msg, "is locked") {
		t.Fatalf("the forced start failed, but not on the disk lease: %s", msg)
	}
	if strings.Contains(msg, `Failed to get "write" lock`) {
		t.Fatalf("QEMU's image lock refused, not the lease: %s", msg)
	}
	if at := w.running(t); at[vm] != a {
		t.Fatalf("%s runs on %q after the refused start", vm, at[vm])
	}
	if e, _ := w.catalogLookup(uuid); e.Owner != a {
		t.Fatalf("catalog owner of %s is %s", vm, e.Owner)
	}
}

// 6f. A hand-planted catalog entry with <qemu:commandline>, owned by a host that then loses power: refused with a
// clear error and an alert (vm.recovery.failed naming it), and nothing runs: no domain of that UUID anywhere, no
// QEMU with the planted argument.
func (w *world) plantedCommandline(t *testing.T) {
	hosts := w.byLoad(t)
	x := hosts[len(hosts)-1]
	xVMs := vmsOn(w.running(t), x)
	uuid := newUUID(t)
	marker := "lab-planted-" + uuid[:8]
	disk := w.newDisk(t, "planted")
	defer os.Remove(disk)
	xml := strings.Replace(plainDomainXML("planted", uuid, disk), "<domain ", `<domain xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0" `, 1)
	xml = strings.Replace(xml, "</domain>", fmt.Sprintf(
		"  <qemu:commandline>\n    <qemu:arg value='-fw_cfg'/>\n    <qemu:arg value='name=opt/%s,string=1'/>\n  </qemu:commandline>\n</domain>", marker), 1)
	entry := activities.CatalogEntry{VMRecord: types.VMRecord{UUID: uuid, Name: "planted", Owner: x, Generation: 1,
		MemoryMiB: vmMemoryMiB, VCPUs: 1, Policy: types.HAPolicy{Enabled: true}, UpdatedAt: time.Now().UTC()}, XML: xml}
	b, err := json.MarshalIndent(entry, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(w.catalogDir(), uuid+".json")
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	nothingRuns := func() error {
		states, err := w.lab.DomainStates(context.Background())
		if err != nil {
			return err
		}
		for h, doms := range states {
			if s, ok := doms["planted"]; ok {
				return fmt.Errorf("planted is defined on %s (%s)", h, s)
			}
		}
		if pids := processesWith(marker); len(pids) > 0 {
			return fmt.Errorf("processes with %s: %v", marker, pids)
		}
		return nil
	}
	since := w.powerOff(t, x)
	var failed []types.Event
	w.eventually(t, 60*time.Second, "vm.recovery.failed for planted", func() error {
		if err := nothingRuns(); err != nil {
			t.Fatal(err)
		}
		failed = w.hooks.find(types.EventRecoveryFailed, since, func(e types.Event) bool { return e.VMUUID == uuid })
		if len(failed) == 0 {
			return fmt.Errorf("none")
		}
		return nil
	})
	t.Logf("vm.recovery.failed planted: %s", failed[0].Reason)
	if !strings.Contains(failed[0].Reason, "qemu:commandline") || !strings.Contains(failed[0].Reason, "refused") {
		t.Fatalf("the alert does not say why: %s", failed[0].Reason)
	}
	w.waitRunningOff(t, 60*time.Second, xVMs, x)
	w.waitState(t, 20*time.Second, x, types.HostRecoveryFailed)
	w.hold(t, 3*time.Second, "nothing runs", nothingRuns)
	os.Remove(path)
	w.waitState(t, 45*time.Second, x, types.HostRecovered)
	w.powerOnAll(t)
	if err := nothingRuns(); err != nil {
		t.Fatal(err)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }

// processesWith lists the PIDs of processes whose command line contains s.
func processesWith(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}
