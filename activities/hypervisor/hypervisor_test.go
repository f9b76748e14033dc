package hypervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"libvirt.org/go/libvirt"

	"vmha/activities"
	"vmha/activities/domainxml"
	"vmha/types"
)

// testURI is libvirt's in-process test driver; every connection in this process shares its state.
const testURI = "test:///default"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func open(t *testing.T, uri string) *Libvirt {
	t.Helper()
	l, err := Open(context.Background(), uri, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func testPolicy() types.HAPolicy {
	return types.HAPolicy{Enabled: true, Priority: 3, Rules: types.Rules{PinLabels: []string{"zone=a"}, AntiAffinityGroup: "web"}}
}

// testDomain builds a vmha domain for the test driver, which only knows domains of type "test".
func testDomain(t *testing.T, name string) (string, string) {
	t.Helper()
	id := uuid.NewString()
	xml, err := domainxml.Build(domainxml.Spec{Name: name, UUID: id, VCPUs: 3, MemoryMiB: 256,
		DiskPath: "/share/" + name + ".qcow2", DiskFormat: "qcow2", DomainType: "qemu", Policy: testPolicy()})
	if err != nil {
		t.Fatal(err)
	}
	return id, strings.Replace(xml, `<domain type="qemu">`, `<domain type="test">`, 1)
}

func state(t *testing.T, l *Libvirt, id string) types.DomainState {
	t.Helper()
	s, err := l.State(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	l := open(t, testURI)
	id, xml := testDomain(t, "lifecycle")
	t.Cleanup(func() { l.Destroy(ctx, id); l.Undefine(ctx, id) })

	if s := state(t, l, id); s != types.DomainNotFound {
		t.Fatalf("state before define = %s", s)
	}
	got, err := l.Define(ctx, xml)
	if err != nil || got != id {
		t.Fatalf("Define = %q, %v; want %s", got, err, id)
	}
	if _, err := l.Define(ctx, xml); err != nil {
		t.Fatalf("redefine: %v", err)
	}
	if s := state(t, l, id); s != types.DomainShutoff {
		t.Fatalf("state after define = %s", s)
	}
	for range 2 {
		if err := l.Start(ctx, id); err != nil {
			t.Fatalf("Start: %v", err)
		}
		if s := state(t, l, id); s != types.DomainRunning {
			t.Fatalf("state after start = %s", s)
		}
	}
	doms, err := l.Domains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !containsDomain(doms, activities.Domain{UUID: id, Name: "lifecycle", State: types.DomainRunning}) {
		t.Fatalf("Domains = %+v, lacks the running domain", doms)
	}
	dump, err := l.InactiveXML(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := domainxml.Parse(dump)
	if err != nil {
		t.Fatal(err)
	}
	want := types.VMRecord{UUID: id, Name: "lifecycle", MemoryMiB: 256, VCPUs: 3, Policy: testPolicy()}
	if !reflect.DeepEqual(rec, want) {
		t.Fatalf("libvirt's inactive XML parses to %+v, want %+v\n%s", rec, want, dump)
	}
	for range 2 {
		if err := l.Destroy(ctx, id); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if s := state(t, l, id); s != types.DomainShutoff {
			t.Fatalf("state after destroy = %s", s)
		}
	}
	for range 2 {
		if err := l.Undefine(ctx, id); err != nil {
			t.Fatalf("Undefine: %v", err)
		}
		if s := state(t, l, id); s != types.DomainNotFound {
			t.Fatalf("state after undefine = %s", s)
		}
	}
	if err := l.Destroy(ctx, id); err != nil {
		t.Fatalf("Destroy of a missing domain: %v", err)
	}
	if err := l.Start(ctx, id); !errors.Is(err, activities.ErrNotFound) {
		t.Fatalf("Start of a missing domain: %v, want ErrNotFound", err)
	}
	if _, err := l.InactiveXML(ctx, id); !errors.Is(err, activities.ErrNotFound) {
		t.Fatalf("InactiveXML of a missing domain: %v, want ErrNotFound", err)
	}
	if _, err := l.Define(ctx, "<domain type='test'><name>broken"); err == nil {
		t.Fatal("Define accepted broken XML")
	}
}

func containsDomain(doms []activities.Domain, d activities.Domain) bool {
	for _, x := range doms {
		if x == d {
			return true
		}
	}
	return false
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	l := open(t, testURI)
	before, err := l.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.CPUs < 1 || before.MemoryTotalMiB < 1 || before.MemoryFreeMiB > before.MemoryTotalMiB ||
		before.CPULoad < 0 || before.CPULoad > 1 || before.SampledAt.IsZero() {
		t.Fatalf("insane stats %+v", before)
	}
	id, xml := testDomain(t, "stats")
	t.Cleanup(func() { l.Destroy(ctx, id); l.Undefine(ctx, id) })
	if _, err := l.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	defined, err := l.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if defined.VCPUsAllocated != before.VCPUsAllocated || defined.MemoryAllocatedMiB != before.MemoryAllocatedMiB {
		t.Fatalf("a defined, stopped domain counted: %+v -> %+v", before, defined)
	}
	if err := l.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	after, err := l.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.VCPUsAllocated-before.VCPUsAllocated != 3 || after.MemoryAllocatedMiB-before.MemoryAllocatedMiB != 256 {
		t.Fatalf("running domain of 3 vCPUs / 256 MiB: stats went from %+v to %+v", before, after)
	}
	if !reflect.DeepEqual(after.AntiAffinityGroups, []string{"web"}) {
		t.Fatalf("anti-affinity groups = %v, want [web]", after.AntiAffinityGroups)
	}
}

// TestStatsUsesAnEarlierSample (issue 11): with a sample of the CPU counters between cpuSampleGap and
// cpuSampleMaxAge old, Stats measures the load since it at once, so placement does not wait; a sample taken just
// now is too close, and the one before it serves; with none usable it takes a fresh pair, cpuSampleGap apart.
// Stats keeps its own samples, so a host asked every 2 s (its heartbeat's stats) always has one.
func TestStatsUsesAnEarlierSample(t *testing.T) {
	ctx := context.Background()
	l := open(t, testURI)
	var counters *libvirt.NodeCPUStats
	if err := l.do(ctx, func(c *libvirt.Connect) error {
		var err error
		counters, err = c.GetCPUStats(int(libvirt.NODE_CPU_STATS_ALL_CPUS), 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, c := range []struct {
		name    string
		samples [2]time.Duration // ages of the two kept samples, newest first; 0: none
		fresh   bool
	}{
		{"a 1 s old sample", [2]time.Duration{time.Second, 0}, false},
		{"one just taken, one 2 s old", [2]time.Duration{10 * time.Millisecond, 2 * time.Second}, false},
		{"only one just taken", [2]time.Duration{10 * time.Millisecond, 0}, true},
		{"only stale ones", [2]time.Duration{cpuSampleMaxAge + time.Second, cpuSampleMaxAge + 2*time.Second}, true},
		{"none", [2]time.Duration{0, 0}, true},
	} {
		var kept [2]cpuSample
		for i, age := range c.samples {
			if age > 0 {
				kept[i] = cpuSample{stats: counters, at: now.Add(-age)}
			}
		}
		l.cpuMu.Lock()
		l.cpuSamples = kept
		l.cpuMu.Unlock()
		if _, ok := l.cpuBaseline(now); ok == c.fresh {
			t.Errorf("%s: baseline found = %t, want %t", c.name, ok, !c.fresh)
		}
	}
	// Stats itself: with a usable sample it answers without the pause a fresh pair needs.
	l.keepCPUSample(cpuSample{stats: counters, at: time.Now().Add(-time.Second)})
	begin := time.Now()
	if _, err := l.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took >= cpuSampleGap {
		t.Fatalf("Stats with a 1 s old sample took %s: it waited for a fresh pair", took)
	}
	// Right after, the 1 s old sample still serves (Stats kept its own, a gap later, as the newest).
	begin = time.Now()
	if _, err := l.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took >= cpuSampleGap {
		t.Fatalf("a second Stats right after took %s: it waited for a fresh pair", took)
	}
	// With no usable sample, a fresh pair: at least the gap between them; it keeps that pair's second sample.
	l.cpuMu.Lock()
	l.cpuSamples = [2]cpuSample{}
	l.cpuMu.Unlock()
	begin = time.Now()
	if _, err := l.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < cpuSampleGap {
		t.Fatalf("Stats without a sample took %s: less than the gap a fresh pair needs", took)
	}
	if _, ok := l.cpuBaseline(time.Now().Add(cpuSampleGap)); !ok {
		t.Fatal("Stats kept no sample for the next call")
	}
}

func TestWatchDefinitions(t *testing.T) {
	ctx := context.Background()
	l := open(t, testURI)
	// Events come through a second connection: the watch must see changes made by anyone, not only itself.
	other := open(t, testURI)
	wctx, cancel := context.WithCancel(ctx)
	events := make(chan activities.DomainEvent, 64)
	watchErr := make(chan error, 1)
	go func() { watchErr <- l.WatchDefinitions(wctx, func(e activities.DomainEvent) { events <- e }) }()
	t.Cleanup(cancel)

	// Registration happens in the watch goroutine: touch a probe domain until its event shows the watch is in place.
	probeID, probeXML := testDomain(t, "watch-probe")
	t.Cleanup(func() { other.Undefine(ctx, probeID) })
	waitEvent(t, events, probeID, func() {
		if _, err := other.Define(ctx, probeXML); err != nil {
			t.Fatal(err)
		}
	})
	id, xml := testDomain(t, "watched")
	t.Cleanup(func() { other.Destroy(ctx, id); other.Undefine(ctx, id) })
	if _, err := other.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	if got := nextEvent(t, events, id); got != activities.DomainDefined {
		t.Fatalf("event %s, want defined", got)
	}
	steps := []struct {
		do   func(context.Context, string) error
		want activities.DomainEventKind
	}{
		{other.Start, activities.DomainStarted},
		{other.Destroy, activities.DomainStopped},
		{other.Undefine, activities.DomainUndefined},
	}
	for _, s := range steps {
		if err := s.do(ctx, id); err != nil {
			t.Fatal(err)
		}
		if got := nextEvent(t, events, id); got != s.want {
			t.Fatalf("event %s, want %s", got, s.want)
		}
	}
	cancel()
	select {
	case err := <-watchErr:
		if err != nil {
			t.Fatalf("WatchDefinitions after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchDefinitions did not return after its context ended")
	}
}

// waitEvent repeats act until an event for id arrives.
func waitEvent(t *testing.T, events <-chan activities.DomainEvent, id string, act func()) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		act()
		select {
		case e := <-events:
			if e.UUID == id {
				return
			}
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("no event for the domain")
		}
	}
}

func nextEvent(t *testing.T, events <-chan activities.DomainEvent, id string) activities.DomainEventKind {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if e.UUID == id {
				return e.Kind
			}
		case <-deadline:
			t.Fatal("no event for the domain")
		}
	}
}

func TestClosedConnection(t *testing.T) {
	l, err := Open(context.Background(), testURI, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.State(context.Background(), uuid.NewString()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("State after Close: %v, want a closed error", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestOpenFails(t *testing.T) {
	_, err := Open(context.Background(), "qemu+unix:///system?socket=/nonexistent/sock", quiet())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/sock") {
		t.Fatalf("Open of a missing socket: %v", err)
	}
}

// setMetadata is `virsh metadata NAME URI --key KEY --config --set XML` on the test driver.
func setMetadata(t *testing.T, l *Libvirt, id, uri, key, xml string) {
	t.Helper()
	err := l.do(context.Background(), func(c *libvirt.Connect) error {
		dom, err := lookup(c, id)
		if err != nil {
			return err
		}
		defer dom.Free()
		return dom.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, xml, key, uri, libvirt.DOMAIN_AFFECT_CONFIG)
	})
	if err != nil {
		t.Fatalf("set metadata %s: %v", uri, err)
	}
}

// An operator opts a VM in with virsh metadata alone: the watch must report it, and only for vmha's namespace.
func TestWatchMetadataChange(t *testing.T) {
	ctx := context.Background()
	l := open(t, testURI)
	other := open(t, testURI)
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	events := make(chan activities.DomainEvent, 64)
	go l.WatchDefinitions(wctx, func(e activities.DomainEvent) { events <- e })

	// A domain defined without vmha metadata, as with virsh define.
	id, xml := testDomain(t, "metadata-watched")
	xml = regexp.MustCompile(`(?s)<metadata>.*</metadata>`).ReplaceAllString(xml, "")
	t.Cleanup(func() { other.Undefine(ctx, id) })
	waitEvent(t, events, id, func() {
		if _, err := other.Define(ctx, xml); err != nil {
			t.Fatal(err)
		}
	})
	drain(events)
	// Another application's element is not vmha's business: no event; then vmha's element: one event.
	setMetadata(t, other, id, "https://example.org/other/1", "other", `<thing a="1"/>`)
	setMetadata(t, other, id, domainxml.Namespace, "vmha", `<ha enabled="true"/>`)
	e := nextDomainEvent(t, events, id)
	if e.Kind != activities.DomainMetadataChanged || e.Detail != domainxml.Namespace || e.Name != "metadata-watched" {
		t.Fatalf("event after virsh metadata = %+v, want %s with detail %s", e, activities.DomainMetadataChanged, domainxml.Namespace)
	}
	// The change is in the persistent definition the keeper reads.
	inactive, err := l.InactiveXML(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := domainxml.Parse(inactive); err != nil || !rec.Policy.Enabled {
		t.Fatalf("policy after virsh metadata = %+v, %v; want enabled", rec.Policy, err)
	}
}

func drain(events <-chan activities.DomainEvent) {
	for {
		select {
		case <-events:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

func nextDomainEvent(t *testing.T, events <-chan activities.DomainEvent, id string) activities.DomainEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if e.UUID == id {
				return e
			}
		case <-deadline:
			t.Fatal("no event for the domain")
		}
	}
}

func TestDisableAutostart(t *testing.T) {
	ctx := context.Background()
	l := open(t, testURI)
	id, xml := testDomain(t, "autostarted")
	t.Cleanup(func() { l.Undefine(ctx, id) })
	if _, err := l.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	autostart := func() bool {
		t.Helper()
		var on bool
		err := l.do(ctx, func(c *libvirt.Connect) error {
			dom, err := lookup(c, id)
			if err != nil {
				return err
			}
			defer dom.Free()
			on, err = dom.GetAutostart()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return on
	}
	// virsh autostart NAME, as an operator may have left it on a VM defined with virsh.
	err := l.do(ctx, func(c *libvirt.Connect) error {
		dom, err := lookup(c, id)
		if err != nil {
			return err
		}
		defer dom.Free()
		return dom.SetAutostart(true)
	})
	if err != nil || !autostart() {
		t.Fatalf("virsh autostart on the test driver: %v", err)
	}
	wasOn, err := l.DisableAutostart(ctx, id)
	if err != nil || !wasOn {
		t.Fatalf("DisableAutostart = %v, %v; want true, nil", wasOn, err)
	}
	if autostart() {
		t.Fatal("autostart still on after DisableAutostart")
	}
	if wasOn, err := l.DisableAutostart(ctx, id); err != nil || wasOn {
		t.Fatalf("second DisableAutostart = %v, %v; want false, nil", wasOn, err)
	}
	if wasOn, err := l.DisableAutostart(ctx, uuid.NewString()); err != nil || wasOn {
		t.Fatalf("DisableAutostart of a missing domain = %v, %v; want false, nil", wasOn, err)
	}
}

func TestStateOf(t *testing.T) {
	for _, c := range []struct {
		state  libvirt.DomainState
		reason int
		want   types.DomainState
	}{
		{libvirt.DOMAIN_RUNNING, int(libvirt.DOMAIN_RUNNING_BOOTED), types.DomainRunning},
		{libvirt.DOMAIN_RUNNING, int(libvirt.DOMAIN_RUNNING_MIGRATED), types.DomainRunning},
		{libvirt.DOMAIN_RUNNING, int(libvirt.DOMAIN_RUNNING_POSTCOPY), types.DomainMigrating},
		{libvirt.DOMAIN_BLOCKED, 0, types.DomainRunning},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_USER), types.DomainOther},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_MIGRATION), types.DomainMigrating},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_POSTCOPY), types.DomainMigrating},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_POSTCOPY_FAILED), types.DomainMigrating},
		{libvirt.DOMAIN_SHUTOFF, int(libvirt.DOMAIN_SHUTOFF_MIGRATED), types.DomainShutoff},
		{libvirt.DOMAIN_CRASHED, 0, types.DomainOther},
	} {
		if got := stateOf(c.state, c.reason); got != c.want {
			t.Errorf("stateOf(%d, %d) = %s, want %s", c.state, c.reason, got, c.want)
		}
	}
}

func TestEventKind(t *testing.T) {
	for _, c := range []struct {
		event      libvirt.DomainEventType
		detail     int
		want       activities.DomainEventKind
		wantDetail string
	}{
		{libvirt.DOMAIN_EVENT_DEFINED, int(libvirt.DOMAIN_EVENT_DEFINED_ADDED), activities.DomainDefined, "added"},
		{libvirt.DOMAIN_EVENT_UNDEFINED, int(libvirt.DOMAIN_EVENT_UNDEFINED_REMOVED), activities.DomainUndefined, "removed"},
		{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_BOOTED), activities.DomainStarted, "booted"},
		// A migration that has only started may still fail: the domain has not arrived yet.
		{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_MIGRATED), activities.DomainStarted, "migrated"},
		{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_MIGRATED), activities.DomainMigratedIn, "migrated"},
		{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY), activities.DomainMigratedIn, "post-copy"},
		{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_UNPAUSED), "", ""},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED), "", ""},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_DESTROYED), activities.DomainStopped, "destroyed"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_MIGRATED), activities.DomainMigratedOut, "migrated"},
	} {
		ev := &libvirt.DomainEventLifecycle{Event: c.event, Detail: c.detail}
		got, ok := eventKind(ev)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("eventKind(%v) = %q, %v; want %q", ev, got, ok, c.want)
		}
		if ok && eventDetail(ev) != c.wantDetail {
			t.Errorf("eventDetail(%v) = %q, want %q", ev, eventDetail(ev), c.wantDetail)
		}
	}
}
