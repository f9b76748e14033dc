package activities_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/hypervisor"
	"vmha/types"
)

// tree lists every path under root, to show a call created nothing.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	if err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		out = append(out, p)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// testHost is a Host on libvirt's in-process test driver with its catalog on root.
func testHost(t *testing.T, root string) *activities.Host {
	t.Helper()
	hv, err := hypervisor.Open(context.Background(), "test:///default", shareTestLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hv.Close() })
	return &activities.Host{Name: "hv1", Hypervisor: hv, Catalog: catalog.New(root, 5*time.Second),
		DomainType: "qemu", SharePath: root, ShareTimeout: 5 * time.Second, Logger: shareTestLogger()}
}

// TestHostStatsWithoutMarker: a host whose share did not mount (its mount point is an empty local directory)
// does not see the shared storage, and asking does not create the catalog there. Once the share is prepared it does.
func TestHostStatsWithoutMarker(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	h := testHost(t, root)
	before := tree(t, root)
	stats, err := h.HostStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats.SharedStorageOK {
		t.Error("SharedStorageOK on an empty mount point without the share marker")
	}
	if after := tree(t, root); !reflect.DeepEqual(after, before) {
		t.Errorf("HostStats changed the mount point: %v, was %v", after, before)
	}
	if _, _, err := catalog.Init(ctx, root, time.Second); err != nil {
		t.Fatal(err)
	}
	if stats, err := h.HostStats(ctx); err != nil || !stats.SharedStorageOK {
		t.Errorf("HostStats on a prepared share = %+v, %v; want SharedStorageOK", stats, err)
	}
}

// TestCreateDomainWithoutMarker: no disk and no directory are made on a share that is not mounted.
func TestCreateDomainWithoutMarker(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	ctx := context.Background()
	root := t.TempDir()
	image := filepath.Join(t.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", image, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	h := testHost(t, root)
	before := tree(t, root)
	_, err := h.CreateDomain(ctx, activities.CreateDomainInput{UUID: "0b0c5a3e-5e4f-4d1c-9d5e-2f7a1b3c4d5e",
		Request: types.CreateVMRequest{Name: "web1", Image: image, VCPUs: 1, MemoryMiB: 64}})
	if !errors.Is(err, activities.ErrShareNotMounted) {
		t.Errorf("CreateDomain without the share marker: %v, want ErrShareNotMounted", err)
	}
	if after := tree(t, root); !reflect.DeepEqual(after, before) {
		t.Errorf("CreateDomain changed the mount point: %v, was %v", after, before)
	}
}

// TestListVMs: the listing keeps the readable VMs and reports every unreadable file whatever the owner asked
// for (it may be that owner's VM); without the marker it fails instead of listing nothing.
func TestListVMs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	cat := catalog.New(root, 5*time.Second)
	s := &activities.Share{Catalog: cat}
	if l, err := s.ListVMs(ctx, "hv1"); !errors.Is(err, activities.ErrShareNotMounted) {
		t.Fatalf("ListVMs without the share marker = %+v, %v; want ErrShareNotMounted", l, err)
	}
	if _, _, err := catalog.Init(ctx, root, time.Second); err != nil {
		t.Fatal(err)
	}
	mine := types.VMRecord{UUID: "0b0c5a3e-5e4f-4d1c-9d5e-2f7a1b3c4d5e", Name: "a", Owner: "hv1", Generation: 1, Policy: types.HAPolicy{Enabled: true}}
	other := types.VMRecord{UUID: "6695eb01-f6a4-8304-79aa-97f2502e193f", Name: "b", Owner: "hv2", Generation: 1, Policy: types.HAPolicy{Enabled: true}}
	for _, r := range []types.VMRecord{mine, other} {
		if err := cat.Put(ctx, activities.CatalogEntry{VMRecord: r, XML: "<domain/>"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(catalog.CatalogDir(root), "notes.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := s.ListVMs(ctx, "hv1")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.VMs) != 1 || l.VMs[0].UUID != mine.UUID || len(l.Unreadable) != 1 || l.Unreadable[0].File != "notes.json" {
		t.Errorf("ListVMs(hv1) = %+v; want VM a and notes.json unreadable", l)
	}
}

func shareTestLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestKeeperSaysMissingShareOnce: a keeper on a host without the share marker writes nothing and says so once at
// error level, however many reconciles and events fail; once the share is back its resync says that too.
func TestKeeperSaysMissingShareOnce(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	h := testHost(t, root)
	var logs bytes.Buffer
	k := &activities.Keeper{Host: "hv1", Hypervisor: h.Hypervisor, Catalog: h.Catalog, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if doms, err := h.Hypervisor.Domains(ctx); err != nil || len(doms) == 0 {
		t.Fatalf("test driver domains = %v, %v; want its default domain", doms, err)
	}
	before := tree(t, root)
	for range 3 {
		k.Resync(ctx)
	}
	if n := strings.Count(logs.String(), `msg="share not mounted`); n != 1 || strings.Count(logs.String(), "level=ERROR") != 1 {
		t.Errorf("logged the missing share %d times, want once at error level:\n%s", n, logs.String())
	}
	if after := tree(t, root); !reflect.DeepEqual(after, before) {
		t.Errorf("keeper changed the mount point: %v, was %v", after, before)
	}
	if _, _, err := catalog.Init(ctx, root, time.Second); err != nil {
		t.Fatal(err)
	}
	k.Resync(ctx)
	if !strings.Contains(logs.String(), "share visible again") {
		t.Errorf("no word of the share's return:\n%s", logs.String())
	}
}

// slowCatalog answers List after a delay, like a large catalog on NFS.
type slowCatalog struct {
	activities.Catalog
	delay time.Duration
}

func (c slowCatalog) List(ctx context.Context) (activities.Listing, error) {
	time.Sleep(c.delay)
	return activities.Listing{}, nil
}

// TestShareActivitiesHeartbeat (lab scenario i7_1): a share activity heartbeats while it runs, so that a task a
// hung host's frozen worker was handed times out after the short heartbeat timeout and is retried elsewhere.
func TestShareActivitiesHeartbeat(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	var beats atomic.Int32
	env.SetOnActivityHeartbeatListener(func(*activity.Info, converter.EncodedValues) { beats.Add(1) })
	env.RegisterActivity(&activities.Share{Catalog: slowCatalog{delay: 1200 * time.Millisecond}})
	if _, err := env.ExecuteActivity("ListVMs", "hv1"); err != nil {
		t.Fatal(err)
	}
	if beats.Load() == 0 {
		t.Fatal("ListVMs ran 1.2 s without a heartbeat")
	}
}

// baseImage makes a 1 MiB qcow2 image in the share's images directory, where create-vm takes its images from.
func baseImage(t *testing.T, share string) string {
	t.Helper()
	image := filepath.Join(activities.ImagesDir(share), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", image, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	return image
}

// TestCreateDomainTakesImagesOnlyFromTheShare (issue 9): a path elsewhere on the hypervisor, a symlink out of the
// images directory, a device, or an image backed by a file outside it never becomes a VM's disk; nothing is left
// behind by a refusal.
func TestCreateDomainTakesImagesOnlyFromTheShare(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("needs qemu-img")
	}
	ctx := context.Background()
	hv1, _, cat := sharedHosts(t)
	images := activities.ImagesDir(hv1.SharePath)
	outside := filepath.Join(t.TempDir(), "secret.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", outside, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	escape := filepath.Join(images, "escape.qcow2")
	if err := os.Symlink(outside, escape); err != nil {
		t.Fatal(err)
	}
	backedOutside := filepath.Join(images, "backed.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", outside, "-F", "qcow2", backedOutside).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	for _, image := range []string{outside, escape, "/dev/null", images, images + "/../vmha/share.json", backedOutside} {
		before := tree(t, hv1.SharePath)
		id := newVM(t, hv1)
		_, err := hv1.CreateDomain(ctx, activities.CreateDomainInput{UUID: id,
			Request: types.CreateVMRequest{Name: "web1", Image: image, VCPUs: 1, MemoryMiB: 64}})
		if err == nil || !strings.Contains(err.Error(), "image") {
			t.Errorf("CreateDomain from %s: err = %v, want a refusal naming the image", image, err)
		}
		if after := tree(t, hv1.SharePath); !reflect.DeepEqual(after, before) {
			t.Errorf("CreateDomain from %s left files behind:\nbefore %s\nafter  %s", image, before, after)
		}
		if _, err := cat.Get(ctx, id); err == nil {
			t.Errorf("CreateDomain from %s recorded the VM in the catalog", image)
		}
	}
	if _, err := hv1.CreateDomain(ctx, activities.CreateDomainInput{UUID: newVM(t, hv1),
		Request: types.CreateVMRequest{Name: "web2", Image: baseImage(t, hv1.SharePath), VCPUs: 1, MemoryMiB: 64}}); err != nil {
		t.Fatalf("CreateDomain from an image in %s: %v", images, err)
	}
}
