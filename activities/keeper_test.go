package activities_test

import (
	"context"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"libvirt.org/go/libvirt"

	"vmha/activities"
	"vmha/activities/domainxml"
	"vmha/types"
)

// Keeper tests (issue 6): on libvirt's test driver, whose state every connection of this process shares.

type strays struct {
	mu   sync.Mutex
	seen []types.StrayCopy
}

func (s *strays) ReportStray(_ context.Context, c types.StrayCopy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, c)
	return nil
}

func (s *strays) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

// virsh is what an operator does by hand, through libvirt's own API.
func virsh(t *testing.T, f func(c *libvirt.Connect)) {
	t.Helper()
	c, err := libvirt.NewConnect("test:///default")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f(c)
}

func domain(t *testing.T, c *libvirt.Connect, id string) *libvirt.Domain {
	t.Helper()
	d, err := c.LookupDomainByUUIDString(id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func newKeeper(h *activities.Host, s *strays) *activities.Keeper {
	return &activities.Keeper{Host: h.Name, Hypervisor: h.Hypervisor, Catalog: h.Catalog, Strays: s, Logger: shareTestLogger(),
		Every: time.Hour, ForgetGrace: 100 * time.Millisecond}
}

// runKeeper runs k until ctx ends and returns once its libvirt event watch delivers: an event sent before that
// would be missed. It watches a domain of its own that is not HA, defined and undefined until its event comes
// through.
func runKeeper(ctx context.Context, t *testing.T, k *activities.Keeper) {
	t.Helper()
	seen := make(chan string, 64)
	k.Hypervisor = watched{Hypervisor: k.Hypervisor, seen: seen}
	go k.Run(ctx)
	probe := uuid.NewString()
	xml := "<domain type='test'><name>watch-probe-" + probe[:8] + "</name><uuid>" + probe +
		"</uuid><memory>1024</memory><os><type>hvm</type></os></domain>"
	for deadline := time.Now().Add(30 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("the keeper's event watch delivered nothing within 30 s")
		}
		if _, err := k.Hypervisor.Define(ctx, xml); err != nil {
			t.Fatal(err)
		}
		if err := k.Hypervisor.Undefine(ctx, probe); err != nil {
			t.Fatal(err)
		}
		for wait := time.After(200 * time.Millisecond); ; {
			select {
			case id := <-seen:
				if id == probe {
					return
				}
				continue
			case <-wait:
			}
			break
		}
	}
}

// watched is a host's libvirt that also tells the test the UUID of each domain whose event its watch delivers.
type watched struct {
	activities.Hypervisor
	seen chan<- string
}

func (w watched) WatchDefinitions(ctx context.Context, fn func(activities.DomainEvent)) error {
	return w.Hypervisor.WatchDefinitions(ctx, func(e activities.DomainEvent) {
		select {
		case w.seen <- e.UUID:
		default:
		}
		fn(e)
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 15 s: %s", what)
}

// TestKeeperFollowsAnOptInWithVirshMetadata (issue 6 items 1 and 3): a VM defined and started with virsh, with
// autostart on, opted in later with `virsh metadata` alone, reaches the catalog and loses its autostart.
func TestKeeperFollowsAnOptInWithVirshMetadata(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hv1, _, cat := sharedHosts(t)
	id := uuid.NewString()
	xml := regexp.MustCompile(`(?s)<metadata>.*</metadata>`).ReplaceAllString(testXML(t, id, ""), "")
	virsh(t, func(c *libvirt.Connect) {
		d, err := c.DomainDefineXML(xml)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.SetAutostart(true); err != nil {
			t.Fatal(err)
		}
		if err := d.Create(); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { hv1.Hypervisor.Destroy(ctx, id); hv1.Hypervisor.Undefine(ctx, id) })
	// The keeper's first reconcile finds a VM that is not HA.
	runKeeper(ctx, t, newKeeper(hv1, &strays{}))
	if _, err := cat.Get(ctx, id); err == nil {
		t.Fatal("a VM without vmha metadata is in the catalog")
	}
	virsh(t, func(c *libvirt.Connect) {
		if err := domain(t, c, id).SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, `<ha enabled="true"/>`, "vmha",
			domainxml.Namespace, libvirt.DOMAIN_AFFECT_CONFIG); err != nil {
			t.Fatal(err)
		}
	})
	eventually(t, "the opted-in VM is in the catalog, owned here", func() bool {
		e, err := cat.Get(ctx, id)
		return err == nil && e.Owner == "hv1" && e.Policy.Enabled
	})
	virsh(t, func(c *libvirt.Connect) {
		eventually(t, "autostart off", func() bool {
			on, err := domain(t, c, id).GetAutostart()
			return err == nil && !on
		})
	})
}

// TestKeeperDropsLeftoversAndReportsStrays: a definition of a VM the catalog gives to another host is dropped while
// it does not run; a copy that runs is reported as a stray and left alone.
func TestKeeperDropsLeftoversAndReportsStrays(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	stopped, running := uuid.NewString(), uuid.NewString()
	for _, id := range []string{stopped, running} {
		xml := testXML(t, id, "")
		xml = regexp.MustCompile(`<name>[^<]*</name>`).ReplaceAllString(xml, "<name>vm-"+id[:8]+"</name>")
		putEntry(t, cat, "hv2", 7, xml)
		if _, err := hv1.Hypervisor.Define(ctx, xml); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hv1.Hypervisor.Destroy(ctx, id); hv1.Hypervisor.Undefine(ctx, id) })
	}
	if err := hv1.Hypervisor.Start(ctx, running); err != nil {
		t.Fatal(err)
	}
	s := &strays{}
	newKeeper(hv1, s).Resync(ctx)
	if state, _ := hv1.Hypervisor.State(ctx, stopped); state != types.DomainNotFound {
		t.Fatalf("leftover definition of hv2's VM is %s, want dropped", state)
	}
	if state, _ := hv1.Hypervisor.State(ctx, running); state != types.DomainRunning || s.count() != 1 || s.seen[0].UUID != running || s.seen[0].Owner != "hv2" {
		t.Fatalf("running copy of hv2's VM: state %s, strays %+v; want reported once and left running", state, s.seen)
	}
	if e, _ := cat.Get(ctx, running); e.Owner != "hv2" || e.Generation != 7 {
		t.Fatalf("the stray changed the catalog: %+v", e.VMRecord)
	}
}

// TestKeeperForgetsAnUndefinedVMAfterTheGrace: an operator's undefine on the owner removes the entry, after a grace
// in which a live migration's new host takes it over (then it stays).
func TestKeeperForgetsAnUndefinedVMAfterTheGrace(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hv1, _, cat := sharedHosts(t)
	gone, moved := uuid.NewString(), uuid.NewString()
	for _, id := range []string{gone, moved} {
		xml := regexp.MustCompile(`<name>[^<]*</name>`).ReplaceAllString(testXML(t, id, ""), "<name>vm-"+id[:8]+"</name>")
		putEntry(t, cat, "hv1", 1, xml)
		if _, err := hv1.Hypervisor.Define(ctx, xml); err != nil {
			t.Fatal(err)
		}
	}
	k := newKeeper(hv1, &strays{})
	k.ForgetGrace = 500 * time.Millisecond
	runKeeper(ctx, t, k)
	for _, id := range []string{gone, moved} {
		if err := hv1.Hypervisor.Undefine(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// Within the grace, hv2 takes the migrated VM over.
	if _, err := cat.Update(ctx, moved, func(e *activities.CatalogEntry, _ bool) (activities.Change, error) {
		e.Owner, e.Generation = "hv2", e.Generation+1
		return activities.Write, nil
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the undefined VM leaves the catalog", func() bool {
		_, err := cat.Get(ctx, gone)
		return err != nil
	})
	if e, err := cat.Get(ctx, moved); err != nil || e.Owner != "hv2" {
		t.Fatalf("the VM hv2 took over: %+v, %v; want kept", e.VMRecord, err)
	}
}

// events is a host's libvirt with the events a test sends in place of libvirt's own: the test driver cannot
// migrate.
type events struct {
	activities.Hypervisor
	ch chan activities.DomainEvent
}

func (e events) WatchDefinitions(ctx context.Context, fn func(activities.DomainEvent)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-e.ch:
			fn(ev)
		}
	}
}

// TestKeeperTakesOverAVMThatMigratedIn (issue 6 item 4): a live migration's new host owns the VM, one generation
// later, so a recovery of the old host can no longer claim it.
func TestKeeperTakesOverAVMThatMigratedIn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hv1, _, cat := sharedHosts(t)
	id := newVM(t, hv1)
	xml := testXML(t, id, "")
	putEntry(t, cat, "hv2", 5, xml)
	if _, err := hv1.Hypervisor.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	if err := hv1.Hypervisor.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	ev := events{Hypervisor: hv1.Hypervisor, ch: make(chan activities.DomainEvent, 1)}
	s := &strays{}
	k := &activities.Keeper{Host: "hv1", Hypervisor: ev, Catalog: hv1.Catalog, Strays: s, Logger: shareTestLogger(), Every: time.Hour}
	// The event comes first: the keeper's start-up check would otherwise see a stray.
	ev.ch <- activities.DomainEvent{UUID: id, Kind: activities.DomainMigratedIn, Detail: "migrated"}
	go k.Run(ctx)
	eventually(t, "the migrated VM belongs to hv1", func() bool {
		e, err := cat.Get(ctx, id)
		return err == nil && e.Owner == "hv1" && e.Generation == 6
	})
	if state, _ := hv1.Hypervisor.State(ctx, id); state != types.DomainRunning {
		t.Fatalf("the migrated VM is %s", state)
	}
}

// TestKeeperKeepsAClaimedDefinition (issue 6 item 8): a reconcile (libvirtd restarted, say) never drops a domain a
// recovery has just defined here: the claim makes it this host's.
func TestKeeperKeepsAClaimedDefinition(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	id := newVM(t, hv1)
	from := putEntry(t, cat, "hv0", 2, testXML(t, id, ""))
	claim, err := hv1.Claim(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	if err := hv1.DefineFromCatalog(ctx, claim); err != nil {
		t.Fatal(err)
	}
	newKeeper(hv1, &strays{}).Resync(ctx)
	if state, _ := hv1.Hypervisor.State(ctx, id); state != types.DomainShutoff {
		t.Fatalf("claimed definition is %s after a reconcile, want kept (shutoff)", state)
	}
	if e, _ := cat.Get(ctx, id); e.Token() != claim || e.Phase != types.PhaseStarting {
		t.Fatalf("entry %+v after a reconcile, want the claim untouched", e.VMRecord)
	}
}
