package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"vmha/activities/domainxml"
	"vmha/types"
)

// Ledger serialises this worker's read-modify-write cycles on catalog entries, so that the lifecycle-event
// keeper and a recovery's ownership commit on the same host cannot overwrite each other.
type Ledger struct {
	mu      sync.Mutex
	Catalog Catalog
}

// Host holds the activities that must run on one hypervisor: libvirt calls and catalog writes for its VMs.
// They are registered on that host's own task queue.
type Host struct {
	Name       string
	Hypervisor Hypervisor
	Ledger     *Ledger
	// DomainType is "kvm" where /dev/kvm works, else "qemu" (TCG).
	DomainType string
	// SharePath is where the shared storage is mounted; new VM disks go under it.
	SharePath string
	// ShareTimeout bounds every filesystem call on the share.
	ShareTimeout time.Duration
	Logger       *slog.Logger
}

// HostStats reads this host's load and memory for the scheduler, and whether it sees the shared storage: the
// share's marker and a writable catalog (Catalog.Writable). A host without the marker is never a target.
func (h *Host) HostStats(ctx context.Context) (types.HostStats, error) {
	stats, err := h.Hypervisor.Stats(ctx)
	if err != nil {
		return types.HostStats{}, fmt.Errorf("stats of %s: %w", h.Name, err)
	}
	stats.Host = h.Name
	stats.SharedStorageOK = h.Ledger.Catalog.Writable(ctx) == nil
	return stats, nil
}

// DefineInput names the catalog entry to define and what it must still look like: if its generation or owner
// moved, the VM was already recovered by someone else and defining it again would start a second copy.
type DefineInput struct {
	UUID       string `json:"uuid"`
	Generation int64  `json:"generation"`
	Owner      string `json:"owner"`
}

// DefineFromCatalog defines the VM on this host from the XML recorded in the catalog (virsh define).
func (h *Host) DefineFromCatalog(ctx context.Context, in DefineInput) error {
	e, err := h.Ledger.Catalog.Get(ctx, in.UUID)
	if err != nil {
		return fmt.Errorf("read catalog of %s: %w", in.UUID, err)
	}
	if err := in.matches(e.VMRecord); err != nil {
		return err
	}
	if _, err := h.Hypervisor.Define(ctx, e.XML); err != nil {
		return fmt.Errorf("define %s on %s: %w", e.Name, h.Name, err)
	}
	return nil
}

func (in DefineInput) matches(r types.VMRecord) error {
	if r.Generation != in.Generation || r.Owner != in.Owner {
		msg := fmt.Sprintf("catalog of %s is at generation %d owned by %s, expected generation %d owned by %s: already moved",
			r.Name, r.Generation, r.Owner, in.Generation, in.Owner)
		return temporal.NewNonRetryableApplicationError(msg, "CatalogMoved", nil)
	}
	return nil
}

// StartDomain starts a defined VM (virsh start). Starting a running VM succeeds, so a retry is harmless.
func (h *Host) StartDomain(ctx context.Context, uuid string) error {
	if err := h.Hypervisor.Start(ctx, uuid); err != nil {
		return fmt.Errorf("start %s on %s: %w", uuid, h.Name, err)
	}
	return nil
}

// WaitRunning confirms the VM runs: libvirt can report a started domain that QEMU quits right after.
func (h *Host) WaitRunning(ctx context.Context, uuid string) error {
	for {
		state, err := h.Hypervisor.State(ctx, uuid)
		if err == nil && state == types.DomainRunning {
			return nil
		}
		activity.RecordHeartbeat(ctx, string(state))
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to run on %s (state %s, %v): %w", uuid, h.Name, state, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RemoveDomain is the compensation of a failed define or start: stop and undefine the VM on this host.
func (h *Host) RemoveDomain(ctx context.Context, uuid string) error {
	if err := h.Hypervisor.Destroy(ctx, uuid); err != nil {
		return fmt.Errorf("destroy %s on %s: %w", uuid, h.Name, err)
	}
	if err := h.Hypervisor.Undefine(ctx, uuid); err != nil {
		return fmt.Errorf("undefine %s on %s: %w", uuid, h.Name, err)
	}
	return nil
}

// DiscardNew removes a VM whose creation failed on this host: its domain and the catalog entry it made
// (generation 1, owned here). The disk stays: the next host's attempt reuses it.
func (h *Host) DiscardNew(ctx context.Context, uuid string) error {
	if err := h.RemoveDomain(ctx, uuid); err != nil {
		return err
	}
	h.Ledger.mu.Lock()
	defer h.Ledger.mu.Unlock()
	e, err := h.Ledger.Catalog.Get(ctx, uuid)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("read catalog of %s: %w", uuid, err)
	case e.Owner != h.Name || e.Generation != 1:
		return nil
	}
	if err := h.Ledger.Catalog.Delete(ctx, uuid); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("forget %s: %w", e.Name, err)
	}
	return nil
}

// CommitOwnership records in the catalog that the VM now belongs to this host, one generation later.
// A retry after a crash finds the commit already done and returns it.
func (h *Host) CommitOwnership(ctx context.Context, in DefineInput) (types.VMRecord, error) {
	h.Ledger.mu.Lock()
	defer h.Ledger.mu.Unlock()
	e, err := h.Ledger.Catalog.Get(ctx, in.UUID)
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("read catalog of %s: %w", in.UUID, err)
	}
	if e.Owner == h.Name && e.Generation == in.Generation+1 {
		return e.VMRecord, nil
	}
	if err := in.matches(e.VMRecord); err != nil {
		return types.VMRecord{}, err
	}
	e.Owner, e.Generation, e.UpdatedAt = h.Name, e.Generation+1, time.Now().UTC()
	if err := h.Ledger.Catalog.Put(ctx, e); err != nil {
		return types.VMRecord{}, fmt.Errorf("commit %s to %s: %w", e.Name, h.Name, err)
	}
	return e.VMRecord, nil
}

// CreateDomainInput is CreateVM's request with the UUID the workflow chose.
type CreateDomainInput struct {
	UUID    string                `json:"uuid"`
	Request types.CreateVMRequest `json:"request"`
}

// CreateDomain gives a new VM its own overlay disk on the share, writes its domain XML with vmha metadata,
// defines it and records it in the catalog as generation 1 owned by this host. A retry finds the catalog entry.
func (h *Host) CreateDomain(ctx context.Context, in CreateDomainInput) (types.VMRecord, error) {
	h.Ledger.mu.Lock()
	defer h.Ledger.mu.Unlock()
	e, err := h.Ledger.Catalog.Get(ctx, in.UUID)
	if err == nil && e.Owner == h.Name {
		return e.VMRecord, nil
	}
	// Without the share (ErrShareNotMounted) no disk is made: it would land in the empty mount point.
	if err != nil && !errors.Is(err, ErrNotFound) {
		return types.VMRecord{}, fmt.Errorf("read catalog of %s: %w", in.UUID, err)
	}
	disk := filepath.Join(h.SharePath, "vmha", "disks", in.Request.Name+".qcow2")
	_, err = Bounded(ctx, h.ShareTimeout, "disk "+disk, func() (struct{}, error) {
		return struct{}{}, makeOverlay(ctx, in.Request.Image, disk)
	})
	if err != nil {
		return types.VMRecord{}, temporal.NewNonRetryableApplicationError(err.Error(), "Disk", err)
	}
	policy := in.Request.Policy
	policy.Enabled = true
	xml, err := domainxml.Build(domainxml.Spec{
		Name: in.Request.Name, UUID: in.UUID, VCPUs: in.Request.VCPUs, MemoryMiB: in.Request.MemoryMiB,
		DiskPath: disk, DiskFormat: "qcow2", Policy: policy, DomainType: h.DomainType,
	})
	if err != nil {
		return types.VMRecord{}, temporal.NewNonRetryableApplicationError(err.Error(), "DomainXML", err)
	}
	if _, err := h.Hypervisor.Define(ctx, xml); err != nil {
		return types.VMRecord{}, fmt.Errorf("define %s on %s: %w", in.Request.Name, h.Name, err)
	}
	// The recorded XML is libvirt's own view (with the MAC it generated), so a recovery brings back the same NIC.
	recorded, err := h.Hypervisor.InactiveXML(ctx, in.UUID)
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("dump %s on %s: %w", in.Request.Name, h.Name, err)
	}
	rec, err := domainxml.Parse(recorded)
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("parse %s: %w", in.Request.Name, err)
	}
	rec.Owner, rec.Generation, rec.UpdatedAt = h.Name, 1, time.Now().UTC()
	if err := h.Ledger.Catalog.Put(ctx, CatalogEntry{VMRecord: rec, XML: recorded}); err != nil {
		return types.VMRecord{}, fmt.Errorf("record %s in catalog: %w", in.Request.Name, err)
	}
	return rec, nil
}

// makeOverlay creates a qcow2 overlay on the image, so VMs share the read-only base and each writes its own file.
func makeOverlay(ctx context.Context, image, disk string) error {
	info, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", image).Output()
	if err != nil {
		return fmt.Errorf("image %q: %w", image, execError(err))
	}
	var meta struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(info, &meta); err != nil {
		return fmt.Errorf("image %q: qemu-img info: %w", image, err)
	}
	// `vmha share init` made the disks directory; it is never created here, where a share that is not mounted
	// would get it in the empty mount point.
	if info, err := os.Stat(filepath.Dir(disk)); err != nil || !info.IsDir() {
		return fmt.Errorf("disk dir %s: %w: mount the share, or prepare it once with `vmha share init`",
			filepath.Dir(disk), errors.Join(ErrShareNotMounted, err))
	}
	if _, err := os.Stat(disk); err == nil {
		return reuseOverlay(ctx, image, disk)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", meta.Format, disk).CombinedOutput()
	if err != nil {
		return fmt.Errorf("create overlay %s on %s: %v: %s", disk, image, err, out)
	}
	return nil
}

// reuseOverlay accepts an existing disk only if it is an overlay of the same image: a retried or moved creation
// of the same VM (names are unique in the catalog). Anything else is another VM's disk.
func reuseOverlay(ctx context.Context, image, disk string) error {
	info, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", disk).Output()
	if err != nil {
		return fmt.Errorf("disk %s exists and cannot be read: %w", disk, execError(err))
	}
	var meta struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(info, &meta); err != nil || meta.Backing != image {
		return fmt.Errorf("disk %s already exists with backing %q, not %q: refusing to reuse another VM's disk", disk, meta.Backing, image)
	}
	return nil
}

func execError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, ee.Stderr)
	}
	return err
}

// Share holds the activities any hypervisor worker can serve, because every host mounts the share.
type Share struct {
	Catalog Catalog
}

// ListVMs lists the HA-enabled VMs of the catalog, all of them or those owned by one host, with every catalog file
// it could not read: such a file may be any host's VM, so it is reported whatever the owner asked for.
// On a host without the share's marker it fails (ErrShareNotMounted) rather than list an empty local directory.
func (s *Share) ListVMs(ctx context.Context, owner string) (types.VMListing, error) {
	l, err := s.Catalog.List(ctx)
	if err != nil {
		return types.VMListing{}, fmt.Errorf("list catalog: %w", err)
	}
	out := types.VMListing{Unreadable: l.Unreadable}
	for _, e := range l.Entries {
		if e.Policy.Enabled && (owner == "" || e.Owner == owner) {
			out.VMs = append(out.VMs, e.VMRecord)
		}
	}
	return out, nil
}
