package activities_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.temporal.io/sdk/temporal"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/domainxml"
	"vmha/types"
)

// Tests of the ownership protocol (issue 6) on libvirt's test driver and a real catalog directory.

// newVM is a fresh VM identity whose domain, wherever a test defines it, is gone after the test: every test-driver
// connection of this process shares one state.
func newVM(t *testing.T, h *activities.Host) string {
	id := uuid.NewString()
	t.Cleanup(func() {
		h.Hypervisor.Destroy(context.Background(), id)
		h.Hypervisor.Undefine(context.Background(), id)
	})
	return id
}

// sharedHosts are two hosts on one prepared share, each with its own test-driver libvirt.
func sharedHosts(t *testing.T) (hv1, hv2 *activities.Host, cat *catalog.Dir) {
	t.Helper()
	root := t.TempDir()
	if _, _, err := catalog.Init(context.Background(), root, time.Second); err != nil {
		t.Fatal(err)
	}
	hv1, hv2 = testHost(t, root), testHost(t, root)
	hv2.Name = "hv2"
	return hv1, hv2, catalog.New(root, 5*time.Second)
}

// testXML is an HA domain the test driver can define, with extra XML spliced before </domain>.
func testXML(t *testing.T, uuid, extra string) string {
	t.Helper()
	xml, err := domainxml.Build(domainxml.Spec{Name: "vm-" + uuid[:8], UUID: uuid, VCPUs: 1, MemoryMiB: 64, DiskPath: "/share/db1.qcow2",
		DiskFormat: "qcow2", DomainType: "qemu", Policy: types.HAPolicy{Enabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	xml = strings.Replace(xml, `<domain type="qemu">`, `<domain type="test">`, 1)
	return strings.Replace(xml, "</domain>", extra+"</domain>", 1)
}

func putEntry(t *testing.T, cat *catalog.Dir, owner string, generation int64, xml string) types.Ownership {
	t.Helper()
	rec, err := domainxml.Parse(xml)
	if err != nil {
		t.Fatal(err)
	}
	rec.Owner, rec.Generation = owner, generation
	if err := cat.Put(context.Background(), activities.CatalogEntry{VMRecord: rec, XML: xml}); err != nil {
		t.Fatal(err)
	}
	return rec.Token()
}

func errType(err error) string {
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		return appErr.Type()
	}
	return ""
}

// TestClaimIsCompareAndSwap: of two hosts claiming one version, one wins; the winner's retry gets its claim back.
func TestClaimIsCompareAndSwap(t *testing.T) {
	ctx := context.Background()
	hv1, hv2, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	from := putEntry(t, cat, "hv0", 3, testXML(t, ownedUUID, ""))
	claim, err := hv1.Claim(ctx, from)
	if err != nil || claim != (types.Ownership{UUID: ownedUUID, Owner: "hv1", Generation: 4}) {
		t.Fatalf("claim = %+v, %v", claim, err)
	}
	if again, err := hv1.Claim(ctx, from); err != nil || again != claim {
		t.Fatalf("retried claim = %+v, %v; want the same claim", again, err)
	}
	if _, err := hv2.Claim(ctx, from); errType(err) != types.ErrTypeMoved {
		t.Fatalf("second host's claim of the same version: %v, want %s", err, types.ErrTypeMoved)
	}
	e, _ := cat.Get(ctx, ownedUUID)
	if e.Owner != "hv1" || e.Phase != types.PhaseStarting || e.ClaimedFrom != "hv0" {
		t.Fatalf("entry %+v after the claim", e.VMRecord)
	}
}

// TestHostStepsRefuseAStaleToken: a define or start whose token the catalog moved past does nothing.
func TestHostStepsRefuseAStaleToken(t *testing.T) {
	ctx := context.Background()
	hv1, hv2, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	from := putEntry(t, cat, "hv0", 3, testXML(t, ownedUUID, ""))
	stale, err := hv1.Claim(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	released, err := (&activities.Share{Catalog: cat}).ReleaseClaim(ctx, stale, "hv0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hv2.Claim(ctx, released); err != nil {
		t.Fatal(err)
	}
	if err := hv1.DefineFromCatalog(ctx, stale); errType(err) != types.ErrTypeMoved {
		t.Fatalf("define with a stale token: %v, want %s", err, types.ErrTypeMoved)
	}
	if err := hv1.StartDomain(ctx, stale); errType(err) != types.ErrTypeMoved {
		t.Fatalf("start with a stale token: %v, want %s", err, types.ErrTypeMoved)
	}
	if state, _ := hv1.Hypervisor.State(ctx, ownedUUID); state != types.DomainNotFound {
		t.Fatalf("domain state %s on hv1 after stale steps, want not defined", state)
	}
}

// TestDefineRefusesUntrustedCatalogXML: anyone who can write the share must not get commands run as root.
func TestDefineRefusesUntrustedCatalogXML(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	planted := testXML(t, ownedUUID, `<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><qemu:arg value="-set"/></qemu:commandline>`)
	from := putEntry(t, cat, "hv0", 1, planted)
	claim, err := hv1.Claim(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	err = hv1.DefineFromCatalog(ctx, claim)
	if errType(err) != "DomainXML" || !strings.Contains(err.Error(), "commandline") {
		t.Fatalf("define of a planted entry: %v, want a DomainXML refusal naming qemu:commandline", err)
	}
	if state, _ := hv1.Hypervisor.State(ctx, ownedUUID); state != types.DomainNotFound {
		t.Fatalf("planted entry defined: state %s", state)
	}
}

// TestRemoveDomainKeepsACommittedVM: a compensation after a commit that landed late must not destroy the VM.
func TestRemoveDomainKeepsACommittedVM(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	from := putEntry(t, cat, "hv0", 1, testXML(t, ownedUUID, ""))
	claim, err := hv1.Claim(ctx, from)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return hv1.DefineFromCatalog(ctx, claim) },
		func() error { return hv1.StartDomain(ctx, claim) },
		func() error { _, err := hv1.CommitOwnership(ctx, claim); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if err := hv1.RemoveDomain(ctx, claim); errType(err) != types.ErrTypeCommitted {
		t.Fatalf("remove after commit: %v, want %s", err, types.ErrTypeCommitted)
	}
	if state, _ := hv1.Hypervisor.State(ctx, ownedUUID); state != types.DomainRunning {
		t.Fatalf("committed VM is %s after the refused removal, want running", state)
	}
}

// TestCreateDomainRefusesAVMHeldElsewhere (issue 6 item 5): a creation retried on another host after the VM was
// created and recovered elsewhere must not take it back, and disks are named by UUID and private (items 9, 10).
func TestCreateDomainRefusesAVMHeldElsewhere(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	ctx := context.Background()
	hv1, hv2, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	image := baseImage(t, hv1.SharePath)
	in := activities.CreateDomainInput{UUID: ownedUUID, Request: types.CreateVMRequest{Name: "web1", Image: image, VCPUs: 1, MemoryMiB: 64}}
	rec, err := hv1.CreateDomain(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(hv1.SharePath, "vmha", "disks", ownedUUID+".qcow2")
	if info, err := os.Stat(disk); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("disk %s: %v, %v; want a 0600 file named by the VM's UUID", disk, info, err)
	}
	if _, err := hv1.CommitOwnership(ctx, rec.Token()); err != nil {
		t.Fatal(err)
	}
	if _, err := hv2.CreateDomain(ctx, in); errType(err) != types.ErrTypeMoved {
		t.Fatalf("creation retried on hv2 over hv1's VM: %v, want %s", err, types.ErrTypeMoved)
	}
	if e, _ := cat.Get(ctx, ownedUUID); e.Owner != "hv1" || e.Generation != 1 {
		t.Fatalf("entry %+v: hv1's VM was taken over", e.VMRecord)
	}
}

// TestUpdateSerialisesWriters: writers on two hosts (two Dir values on one share) never lose an update.
func TestUpdateSerialisesWriters(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	putEntry(t, cat, "hv1", 0, testXML(t, ownedUUID, ""))
	second := catalog.New(hv1.SharePath, 5*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		c := cat
		if i%2 == 1 {
			c = second
		}
		go func() {
			defer wg.Done()
			if _, err := c.Update(ctx, ownedUUID, func(e *activities.CatalogEntry, _ bool) (activities.Change, error) {
				e.Generation++
				return activities.Write, nil
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if e, _ := cat.Get(ctx, ownedUUID); e.Generation != 40 {
		t.Fatalf("generation %d after 40 increments from two hosts, want 40", e.Generation)
	}
}

// TestUpdateGivenUpIsNotPublished: a write still in flight when its timeout fires must not land afterwards and roll
// a newer version back.
func TestUpdateGivenUpIsNotPublished(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	putEntry(t, cat, "hv1", 1, testXML(t, ownedUUID, ""))
	slow := catalog.New(hv1.SharePath, 100*time.Millisecond)
	_, err := slow.Update(ctx, ownedUUID, func(e *activities.CatalogEntry, _ bool) (activities.Change, error) {
		time.Sleep(300 * time.Millisecond)
		e.Owner = "late"
		return activities.Write, nil
	})
	if err == nil {
		t.Fatal("an update slower than its timeout succeeded")
	}
	time.Sleep(500 * time.Millisecond)
	if e, _ := cat.Get(ctx, ownedUUID); e.Owner != "hv1" {
		t.Fatalf("owner %q: the given-up write landed late", e.Owner)
	}
}

// TestUpdateBreaksAStaleLock: a writer that died holding the lock does not block the entry for ever.
func TestUpdateBreaksAStaleLock(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	ownedUUID := newVM(t, hv1)
	putEntry(t, cat, "hv1", 1, testXML(t, ownedUUID, ""))
	lock := filepath.Join(catalog.CatalogDir(hv1.SharePath), "."+ownedUUID+".lock")
	if err := os.WriteFile(lock, []byte("dead-writer\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(lock, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Update(ctx, ownedUUID, func(e *activities.CatalogEntry, _ bool) (activities.Change, error) {
		e.Generation++
		return activities.Write, nil
	}); err != nil {
		t.Fatalf("update behind a stale lock: %v", err)
	}
}

// TestDiscardNewRemovesOnlyAnUncommittedCreation: a creation that failed on this host leaves no domain and no entry;
// a VM committed here is never discarded.
func TestDiscardNewRemovesOnlyAnUncommittedCreation(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	image := baseImage(t, hv1.SharePath)
	failed, kept := newVM(t, hv1), newVM(t, hv1)
	for _, id := range []string{failed, kept} {
		in := activities.CreateDomainInput{UUID: id, Request: types.CreateVMRequest{Name: "vm-" + id[:8], Image: image, VCPUs: 1, MemoryMiB: 64}}
		if _, err := hv1.CreateDomain(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hv1.CommitOwnership(ctx, types.Ownership{UUID: kept, Owner: "hv1", Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if err := hv1.DiscardNew(ctx, failed); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Get(ctx, failed); !errors.Is(err, activities.ErrNotFound) {
		t.Fatalf("entry of the discarded creation: %v, want gone", err)
	}
	if state, _ := hv1.Hypervisor.State(ctx, failed); state != types.DomainNotFound {
		t.Fatalf("discarded creation is %s on hv1, want not defined", state)
	}
	if err := hv1.DiscardNew(ctx, kept); errType(err) != types.ErrTypeCommitted {
		t.Fatalf("discard of a committed VM: %v, want %s", err, types.ErrTypeCommitted)
	}
	if e, err := cat.Get(ctx, kept); err != nil || e.Owner != "hv1" {
		t.Fatalf("committed VM's entry %+v, %v: want kept", e.VMRecord, err)
	}
}

// TestRemoveDomainKeepsANewerVersion (review): a stale attempt's clean-up must not destroy the VM a later recovery
// committed to the same host.
func TestRemoveDomainKeepsANewerVersion(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	id := newVM(t, hv1)
	xml := testXML(t, id, "")
	putEntry(t, cat, "hv1", 5, xml)
	if _, err := hv1.Hypervisor.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	if err := hv1.Hypervisor.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	stale := types.Ownership{UUID: id, Owner: "hv1", Generation: 3}
	if err := hv1.RemoveDomain(ctx, stale); errType(err) != types.ErrTypeMoved {
		t.Fatalf("stale clean-up: %v, want %s", err, types.ErrTypeMoved)
	}
	if state, _ := hv1.Hypervisor.State(ctx, id); state != types.DomainRunning {
		t.Fatalf("the VM committed at generation 5 is %s after a generation-3 clean-up", state)
	}
}

// TestAdoptStray: the only running copy becomes its host's, from the version it was found at and no other.
func TestAdoptStray(t *testing.T) {
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	id := newVM(t, hv1)
	xml := testXML(t, id, "")
	putEntry(t, cat, "hv2", 3, xml)
	if _, err := hv1.Hypervisor.Define(ctx, xml); err != nil {
		t.Fatal(err)
	}
	if err := hv1.Hypervisor.Start(ctx, id); err != nil {
		t.Fatal(err)
	}
	old := types.StrayCopy{VM: "x", UUID: id, Host: "hv1", Owner: "hv2", Generation: 2}
	if err := hv1.AdoptStray(ctx, old); errType(err) != types.ErrTypeMoved {
		t.Fatalf("adopt from an older version: %v, want %s", err, types.ErrTypeMoved)
	}
	if err := hv1.AdoptStray(ctx, types.StrayCopy{VM: "x", UUID: id, Host: "hv1", Owner: "hv2", Generation: 3}); err != nil {
		t.Fatal(err)
	}
	if e, _ := cat.Get(ctx, id); e.Owner != "hv1" || e.Generation != 4 {
		t.Fatalf("entry %+v after adoption, want hv1 at generation 4", e.VMRecord)
	}
}
