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
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"vmha/activities/domainxml"
	"vmha/types"
)

// Host holds the activities that must run on one hypervisor: libvirt calls and catalog writes for its VMs.
// They are registered on that host's own task queue. Every call that acts on a VM carries its ownership token
// (types.Ownership) and checks it against the catalog first: a host acts only on the VMs the catalog gives it.
type Host struct {
	Name       string
	Hypervisor Hypervisor
	Catalog    Catalog
	// DomainType is "kvm" where /dev/kvm works, else "qemu" (TCG).
	DomainType string
	// SharePath is where the shared storage is mounted; new VM disks go under it.
	SharePath string
	// ShareTimeout bounds every filesystem call on the share.
	ShareTimeout time.Duration
	Logger       *slog.Logger

	// vmLocks holds one mutex per VM UUID (see lockVM).
	vmLocks sync.Map
}

// HostStats reads this host's load and memory for the scheduler, and whether it sees the shared storage: the
// share's marker and a writable catalog (Catalog.Writable). A host without the marker is never a target.
func (h *Host) HostStats(ctx context.Context) (types.HostStats, error) {
	stats, err := h.Hypervisor.Stats(ctx)
	if err != nil {
		return types.HostStats{}, fmt.Errorf("stats of %s: %w", h.Name, err)
	}
	stats.Host = h.Name
	stats.SharedStorageOK = h.Catalog.Writable(ctx) == nil
	return stats, nil
}

// Claim takes a VM for this host before anything is defined here: the catalog moves from the token's owner to this
// host, one generation later, in phase starting. Only one host can claim a given version, so two recoveries of
// one VM can never both start it. A retry finds its own claim and returns it.
func (h *Host) Claim(ctx context.Context, from types.Ownership) (types.Ownership, error) {
	claim := types.Ownership{UUID: from.UUID, Owner: h.Name, Generation: from.Generation + 1}
	_, err := h.Catalog.Update(ctx, from.UUID, func(e *CatalogEntry, exists bool) (Change, error) {
		switch {
		case !exists:
			return Keep, moved(from.UUID, "it is no longer in the catalog")
		case e.Token() == claim && e.Phase == types.PhaseStarting && e.ClaimedFrom == from.Owner:
			return Keep, nil
		case e.Token() != from:
			return Keep, movedFrom(e.VMRecord, from)
		}
		e.Owner, e.Generation, e.Phase, e.ClaimedFrom, e.UpdatedAt = h.Name, claim.Generation, types.PhaseStarting, from.Owner, time.Now().UTC()
		return Write, nil
	})
	if err != nil {
		return types.Ownership{}, fmt.Errorf("claim %s for %s: %w", from.UUID, h.Name, err)
	}
	return claim, nil
}

// DefineFromCatalog defines the VM on this host from the XML recorded in the catalog (virsh define), once the
// token shows this host holds it and the XML passes the checks for untrusted input: anyone who can write the
// share could otherwise run commands as root on whichever host recovers the entry.
func (h *Host) DefineFromCatalog(ctx context.Context, tok types.Ownership) error {
	e, err := h.holding(ctx, tok)
	if err != nil {
		return err
	}
	if err := domainxml.CheckTrusted(e.XML, e.UUID); err != nil {
		return temporal.NewNonRetryableApplicationError(fmt.Sprintf("catalog entry of %s refused: %v", e.Name, err), types.ErrTypeDomainXML, err)
	}
	if _, err := h.Hypervisor.Define(ctx, e.XML); err != nil {
		return fmt.Errorf("define %s on %s: %w", e.Name, h.Name, err)
	}
	return nil
}

// StartDomain starts a defined VM (virsh start) that the token gives to this host. Starting a running VM
// succeeds, so a retry is harmless.
func (h *Host) StartDomain(ctx context.Context, tok types.Ownership) error {
	defer h.lockVM(tok.UUID)()
	defer keepAlive(ctx)()
	if _, err := h.holding(ctx, tok); err != nil {
		return err
	}
	if err := h.Hypervisor.Start(ctx, tok.UUID); err != nil {
		return fmt.Errorf("start %s on %s: %w", tok.UUID, h.Name, err)
	}
	return nil
}

// WaitRunning confirms the VM runs: libvirt can report a started domain that QEMU quits right after.
func (h *Host) WaitRunning(ctx context.Context, uuid string) error {
	var state types.DomainState
	var stateErr error
	err := PollUntil(ctx, 100*time.Millisecond, func() bool {
		state, stateErr = h.Hypervisor.State(ctx, uuid)
		if stateErr == nil && state == types.DomainRunning {
			return true
		}
		activity.RecordHeartbeat(ctx, string(state))
		return false
	})
	if err != nil {
		return fmt.Errorf("wait for %s to run on %s (state %s, %v): %w", uuid, h.Name, state, stateErr, err)
	}
	return nil
}

// CommitOwnership ends this host's claim: the VM runs here and is owned here. A retry finds it committed.
func (h *Host) CommitOwnership(ctx context.Context, tok types.Ownership) (types.VMRecord, error) {
	e, err := h.Catalog.Update(ctx, tok.UUID, func(e *CatalogEntry, exists bool) (Change, error) {
		switch {
		case !exists:
			return Keep, moved(tok.UUID, "it is no longer in the catalog")
		case e.Token() != tok || tok.Owner != h.Name:
			return Keep, movedFrom(e.VMRecord, tok)
		case e.Phase == types.PhaseOwned:
			return Keep, nil
		}
		e.Phase, e.ClaimedFrom, e.UpdatedAt = types.PhaseOwned, "", time.Now().UTC()
		return Write, nil
	})
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("commit %s to %s: %w", tok.UUID, h.Name, err)
	}
	return e.VMRecord, nil
}

// RemoveDomain is the compensation of a failed claim, define or start: stop and undefine the VM on this host. A VM
// the catalog shows committed to this host under the token is never removed (a commit whose answer was lost
// landed after all): that is reported as Committed, and the VM keeps running. Nor is one the catalog gives to this
// host at a newer version (a later recovery put it here): that is CatalogMoved. The removal waits for a start of
// the same VM still running in libvirt, and succeeds only when libvirt no longer knows the domain.
func (h *Host) RemoveDomain(ctx context.Context, tok types.Ownership) error {
	defer h.lockVM(tok.UUID)()
	defer keepAlive(ctx)()
	e, err := h.Catalog.Get(ctx, tok.UUID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("read catalog of %s: %w", tok.UUID, err)
	}
	if err == nil && e.Owner == h.Name && tok.Owner == h.Name {
		switch {
		case e.Generation == tok.Generation && e.Phase == types.PhaseOwned:
			return temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("%s is committed to %s at generation %d: not removed", e.Name, h.Name, tok.Generation), types.ErrTypeCommitted, nil)
		case e.Generation > tok.Generation:
			return moved(tok.UUID, fmt.Sprintf("%s is %s's at generation %d, newer than the attempt's %d: not removed", e.Name, h.Name, e.Generation, tok.Generation))
		}
	}
	if err := h.Hypervisor.Destroy(ctx, tok.UUID); err != nil {
		return fmt.Errorf("destroy %s on %s: %w", tok.UUID, h.Name, err)
	}
	if err := h.Hypervisor.Undefine(ctx, tok.UUID); err != nil {
		return fmt.Errorf("undefine %s on %s: %w", tok.UUID, h.Name, err)
	}
	if state, err := h.Hypervisor.State(ctx, tok.UUID); err != nil || state != types.DomainNotFound {
		return fmt.Errorf("remove %s on %s: libvirt still has it (%s, %v)", tok.UUID, h.Name, state, err)
	}
	return nil
}

// lockVM serialises this worker's starts and removals of one VM: a removal waits for a start still running in
// libvirt (its activity may have timed out), instead of finding the domain inactive and the start landing after.
func (h *Host) lockVM(uuid string) (unlock func()) {
	m, _ := h.vmLocks.LoadOrStore(uuid, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// DomainState is the VM's state on this host, for a decision about a copy elsewhere.
func (h *Host) DomainState(ctx context.Context, uuid string) (types.DomainState, error) {
	return h.Hypervisor.State(ctx, uuid)
}

// DestroyStray ends a copy of a VM running on this host while the catalog gives the VM to another host whose copy
// runs: stop and undefine it here. The catalog is read again first: a VM that meanwhile became this host's stays.
func (h *Host) DestroyStray(ctx context.Context, s types.StrayCopy) error {
	e, err := h.Catalog.Get(ctx, s.UUID)
	if err != nil {
		return fmt.Errorf("read catalog of %s: %w", s.VM, err)
	}
	if e.Owner == h.Name {
		return moved(s.UUID, fmt.Sprintf("%s now belongs to %s: its copy here is not a stray", e.Name, h.Name))
	}
	withActivityIDs(ctx, h.Logger).Error("destroying stray copy: the VM runs on its owner too", "vm", e.Name, "vm_uuid", s.UUID, "owner", e.Owner, "host", h.Name)
	if err := h.Hypervisor.Destroy(ctx, s.UUID); err != nil {
		return fmt.Errorf("destroy stray %s on %s: %w", e.Name, h.Name, err)
	}
	if err := h.Hypervisor.Undefine(ctx, s.UUID); err != nil {
		return fmt.Errorf("undefine stray %s on %s: %w", e.Name, h.Name, err)
	}
	return nil
}

// AdoptStray makes this host the owner of a VM that runs only here (its owner answered that it does not run it
// there: a live migration whose arrival event was missed, say), one generation later. Only the version the stray
// was found at can be adopted, and only while no recovery claims it: anything else changed hands meanwhile.
func (h *Host) AdoptStray(ctx context.Context, s types.StrayCopy) error {
	from := types.Ownership{UUID: s.UUID, Owner: s.Owner, Generation: s.Generation}
	_, err := h.Catalog.Update(ctx, s.UUID, func(e *CatalogEntry, exists bool) (Change, error) {
		switch {
		case !exists:
			return Keep, moved(s.UUID, "it is no longer in the catalog")
		case e.Token() != from || e.Phase != types.PhaseOwned:
			return Keep, movedFrom(e.VMRecord, from)
		}
		if state, err := h.Hypervisor.State(ctx, s.UUID); err != nil || state != types.DomainRunning {
			return Keep, fmt.Errorf("%s is %s here (%v): not adopted", e.Name, state, err)
		}
		withActivityIDs(ctx, h.Logger).Warn("adopting the only running copy: the catalog gave it to a host that does not run it", "vm", e.Name,
			"vm_uuid", s.UUID, "from", s.Owner, "host", h.Name, "generation", e.Generation+1)
		e.Owner, e.Generation, e.UpdatedAt = h.Name, e.Generation+1, time.Now().UTC()
		return Write, nil
	})
	if err != nil {
		return fmt.Errorf("adopt %s on %s: %w", s.VM, h.Name, err)
	}
	return nil
}

// DiscardNew removes a VM whose creation failed on this host: its domain and the catalog entry it made (generation
// 1, still starting here). The disk stays: the next host's attempt reuses it.
func (h *Host) DiscardNew(ctx context.Context, uuid string) error {
	tok := types.Ownership{UUID: uuid, Owner: h.Name, Generation: 1}
	if err := h.RemoveDomain(ctx, tok); err != nil {
		return err
	}
	_, err := h.Catalog.Update(ctx, uuid, func(e *CatalogEntry, exists bool) (Change, error) {
		if !exists || e.Token() != tok || e.Phase != types.PhaseStarting {
			return Keep, nil
		}
		return Remove, nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("forget %s: %w", uuid, err)
	}
	return nil
}

// ImagesDir holds the base images new VMs are created from (create-vm --image): only files under it are accepted.
// `vmha share init` creates it.
func ImagesDir(sharePath string) string { return filepath.Join(sharePath, "images") }

// CreateDomainInput is CreateVM's request with the UUID the workflow chose.
type CreateDomainInput struct {
	UUID    string                `json:"uuid"`
	Request types.CreateVMRequest `json:"request"`
}

// CreateDomain gives a new VM its own overlay disk on the share (named by its UUID, so no two VMs ever share a
// disk), writes its domain XML with vmha metadata, defines it and records it in the catalog as generation 1
// claimed by this host. A retry finds its own entry; an entry that another host holds is refused: the VM was
// created or recovered there, and defining it here would start a second copy.
func (h *Host) CreateDomain(ctx context.Context, in CreateDomainInput) (types.VMRecord, error) {
	tok := types.Ownership{UUID: in.UUID, Owner: h.Name, Generation: 1}
	e, err := h.Catalog.Get(ctx, in.UUID)
	switch {
	case err == nil && e.Token() == tok && e.Phase == types.PhaseStarting:
		return e.VMRecord, nil
	case err == nil:
		return types.VMRecord{}, movedFrom(e.VMRecord, tok)
	case !errors.Is(err, ErrNotFound):
		// Without the share (ErrShareNotMounted) no disk is made: it would land in the empty mount point.
		return types.VMRecord{}, fmt.Errorf("read catalog of %s: %w", in.UUID, err)
	}
	disk := filepath.Join(h.SharePath, "vmha", "disks", in.UUID+".qcow2")
	_, err = Bounded(ctx, h.ShareTimeout, "disk "+disk, func() (struct{}, error) {
		return struct{}{}, makeOverlay(ctx, ImagesDir(h.SharePath), in.Request.Image, disk)
	})
	if err != nil {
		return types.VMRecord{}, temporal.NewNonRetryableApplicationError(err.Error(), types.ErrTypeDisk, err)
	}
	policy := in.Request.Policy
	policy.Enabled = true
	xml, err := domainxml.Build(domainxml.Spec{
		Name: in.Request.Name, UUID: in.UUID, VCPUs: in.Request.VCPUs, MemoryMiB: in.Request.MemoryMiB,
		DiskPath: disk, DiskFormat: "qcow2", Policy: policy, DomainType: h.DomainType,
	})
	if err != nil {
		return types.VMRecord{}, temporal.NewNonRetryableApplicationError(err.Error(), types.ErrTypeDomainXML, err)
	}
	var rec types.VMRecord
	// The entry comes first: the catalog knows of the VM before any host could run it.
	_, err = h.Catalog.Update(ctx, in.UUID, func(e *CatalogEntry, exists bool) (Change, error) {
		if exists {
			return Keep, movedFrom(e.VMRecord, tok)
		}
		var perr error
		if rec, perr = domainxml.Parse(xml); perr != nil {
			return Keep, perr
		}
		rec.Owner, rec.Generation, rec.Phase, rec.UpdatedAt = h.Name, 1, types.PhaseStarting, time.Now().UTC()
		*e = CatalogEntry{VMRecord: rec, XML: xml}
		return Write, nil
	})
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("record %s in catalog: %w", in.Request.Name, err)
	}
	if _, err := h.Hypervisor.Define(ctx, xml); err != nil {
		return types.VMRecord{}, fmt.Errorf("define %s on %s: %w", in.Request.Name, h.Name, err)
	}
	// The recorded XML is libvirt's own view (with the MAC it generated), so a recovery brings back the same NIC.
	recorded, err := h.Hypervisor.InactiveXML(ctx, in.UUID)
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("dump %s on %s: %w", in.Request.Name, h.Name, err)
	}
	_, err = h.Catalog.Update(ctx, in.UUID, func(e *CatalogEntry, exists bool) (Change, error) {
		if !exists || e.Token() != tok {
			return Keep, moved(in.UUID, "its entry changed while it was created")
		}
		e.XML = recorded
		return Write, nil
	})
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("record %s in catalog: %w", in.Request.Name, err)
	}
	return rec, nil
}

// makeOverlay creates a qcow2 overlay on the image, so VMs share the read-only base and each writes its own file.
// The image, and every file it is backed by, must lie under imagesDir (imageIn).
func makeOverlay(ctx context.Context, imagesDir, image, disk string) error {
	// `vmha share init` made the disks directory; it is never created here, where a share that is not mounted
	// would get it in the empty mount point.
	if info, err := os.Stat(filepath.Dir(disk)); err != nil || !info.IsDir() {
		return fmt.Errorf("disk dir %s: %w: mount the share, or prepare it once with `vmha share init`",
			filepath.Dir(disk), errors.Join(ErrShareNotMounted, err))
	}
	image, err := imageIn(imagesDir, image)
	if err != nil {
		return err
	}
	info, err := exec.CommandContext(ctx, "qemu-img", "info", "--backing-chain", "--output=json", image).Output()
	if err != nil {
		return fmt.Errorf("image %q: %w", image, execError(err))
	}
	var chain []struct {
		Filename string `json:"filename"`
		Format   string `json:"format"`
	}
	if err := json.Unmarshal(info, &chain); err != nil || len(chain) == 0 {
		return fmt.Errorf("image %q: qemu-img info: %v", image, err)
	}
	for _, layer := range chain[1:] {
		if _, err := imageIn(imagesDir, layer.Filename); err != nil {
			return fmt.Errorf("image %q is backed by another file: %w", image, err)
		}
	}
	if _, err := os.Stat(disk); err == nil {
		return reuseOverlay(ctx, image, disk)
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", chain[0].Format, disk).CombinedOutput()
	if err != nil {
		return fmt.Errorf("create overlay %s on %s: %v: %s", disk, image, err, out)
	}
	// A VM's disk is its data: nobody else on the host reads it.
	return os.Chmod(disk, 0o600)
}

// imageIn accepts a new VM's image only as a regular file under dir, the share's images directory, symlinks resolved:
// any other path on the hypervisor (a block device, a file of the host's own, another VM's disk) would become the new
// VM's disk. It returns the resolved path.
func imageIn(dir, image string) (string, error) {
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("image %q: the share's images directory: %w", image, err)
	}
	real, err := filepath.EvalSymlinks(image)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", image, err)
	}
	rel, err := filepath.Rel(realDir, real)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("image %q: want a file under %s (it resolves to %s)", image, dir, real)
	}
	info, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", image, err)
	}
	if !info.Mode().IsRegular() {
		return "", fmt.Errorf("image %q: want a regular file, not %s", image, info.Mode().Type())
	}
	return real, nil
}

// reuseOverlay accepts an existing disk only if it is an overlay of the same image: a retried or moved creation
// of the same VM (disks are named by the VM's UUID). Anything else is not this VM's disk.
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
	defer keepAlive(ctx)()
	l, err := s.Catalog.List(ctx)
	if err != nil {
		return types.VMListing{}, fmt.Errorf("list catalog: %w", err)
	}
	out := types.VMListing{Unreadable: l.Unreadable}
	for _, e := range l.Entries {
		// A claim taken from the host that was never committed or released is still that host's to recover.
		mine := e.Owner == owner || e.Phase == types.PhaseStarting && e.ClaimedFrom == owner
		if e.Policy.Enabled && (owner == "" || mine) {
			out.VMs = append(out.VMs, e.VMRecord)
		}
	}
	return out, nil
}

// ReleaseClaim gives a VM back to the host it was claimed from, one generation later, once the claimant's copy was
// removed: the next target can then claim it. A retry finds it released.
func (s *Share) ReleaseClaim(ctx context.Context, claim types.Ownership, from string) (types.Ownership, error) {
	defer keepAlive(ctx)()
	released := types.Ownership{UUID: claim.UUID, Owner: from, Generation: claim.Generation + 1}
	_, err := s.Catalog.Update(ctx, claim.UUID, func(e *CatalogEntry, exists bool) (Change, error) {
		switch {
		case !exists:
			return Keep, moved(claim.UUID, "it is no longer in the catalog")
		case e.Token() == released && e.Phase == types.PhaseOwned:
			return Keep, nil
		case e.Token() != claim || e.Phase != types.PhaseStarting || e.ClaimedFrom != from:
			return Keep, movedFrom(e.VMRecord, claim)
		}
		e.Owner, e.Generation, e.Phase, e.ClaimedFrom, e.UpdatedAt = from, released.Generation, types.PhaseOwned, "", time.Now().UTC()
		return Write, nil
	})
	if err != nil {
		return types.Ownership{}, fmt.Errorf("release %s back to %s: %w", claim.UUID, from, err)
	}
	return released, nil
}

func moved(uuid, why string) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf("%s: %s", uuid, why), types.ErrTypeMoved, nil)
}

func movedFrom(r types.VMRecord, tok types.Ownership) error {
	return moved(r.UUID, fmt.Sprintf("%s is at generation %d owned by %s (%s), not generation %d owned by %s: it changed hands",
		r.Name, r.Generation, r.Owner, phaseName(r.Phase), tok.Generation, tok.Owner))
}

func phaseName(p types.VMPhase) string {
	if p == types.PhaseOwned {
		return "owned"
	}
	return string(p)
}

// holding reads the entry and checks that the token is its current version, held by this host.
func (h *Host) holding(ctx context.Context, tok types.Ownership) (CatalogEntry, error) {
	e, err := h.Catalog.Get(ctx, tok.UUID)
	if errors.Is(err, ErrNotFound) {
		return e, moved(tok.UUID, "it is no longer in the catalog")
	}
	if err != nil {
		return e, fmt.Errorf("read catalog of %s: %w", tok.UUID, err)
	}
	if e.Token() != tok || tok.Owner != h.Name {
		return e, movedFrom(e.VMRecord, tok)
	}
	return e, nil
}
