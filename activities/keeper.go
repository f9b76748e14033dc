package activities

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"vmha/activities/domainxml"
	"vmha/types"
)

// Keeper keeps the catalog current from this host's libvirt, and this host's libvirt in line with the catalog. It
// follows every event that can change where a VM lives or whether it is HA (defined, undefined, started, stopped,
// migrated, metadata changed) and checks the whole host again every Every, since an event can be missed:
//   - an HA VM this host owns (or a new one) is recorded, with autostart turned off: libvirtd must never start an
//     HA VM by itself on a host that comes back after its VMs were recovered elsewhere;
//   - a VM that arrived by live migration is taken over, one generation later;
//   - a definition of a VM the catalog gives to another host is dropped while it does not run, and a copy that
//     runs is reported as a stray (StrayReporter), which ends it if the owner's copy runs;
//   - a VM undefined on its owner leaves the catalog, after a grace that lets a migration's new host take it.
//
// It is not an activity: the hypervisor worker runs it.
type Keeper struct {
	Host       string
	Hypervisor Hypervisor
	Catalog    Catalog
	Strays     StrayReporter
	Logger     *slog.Logger
	// Every is how often the whole host is checked again (default 30 s).
	Every time.Duration
	// ForgetGrace is how long an undefined VM stays in the catalog before it is removed (default 15 s).
	ForgetGrace time.Duration

	// shareMissing is set once the share's absence was logged, so it is said once and not per VM and event.
	shareMissing atomic.Bool
}

// StrayReporter is told about a copy of a VM running on a host the catalog does not give it to.
type StrayReporter interface {
	ReportStray(ctx context.Context, s types.StrayCopy) error
}

// Run reconciles, then follows libvirt's events and reconciles every Every until ctx ends.
func (k *Keeper) Run(ctx context.Context) error {
	events := make(chan DomainEvent, 64)
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- k.Hypervisor.WatchDefinitions(ctx, func(e DomainEvent) {
			select {
			case events <- e:
			case <-ctx.Done():
			}
		})
	}()
	k.Resync(ctx)
	tick := time.NewTicker(cmp.Or(k.Every, 30*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			return fmt.Errorf("watch libvirt events on %s: %w", k.Host, err)
		case <-tick.C:
			k.Resync(ctx)
		case e := <-events:
			if err := k.apply(ctx, e); err != nil {
				k.logError("catalog update", err, "vm", e.Name, "event", e.Kind)
			}
		}
	}
}

// Resync reconciles and logs the outcome: at start, periodically, and whenever the share's marker becomes visible
// again, since nothing reached the catalog while it was not.
func (k *Keeper) Resync(ctx context.Context) {
	if err := k.Reconcile(ctx); err != nil {
		k.logError("reconcile catalog", err)
	} else if k.shareMissing.Swap(false) {
		k.Logger.Info("share visible again: catalog reconciled", "host", k.Host)
	}
}

// logError logs a catalog error. A share that is not mounted is said once, clearly, until a reconcile succeeds.
func (k *Keeper) logError(msg string, err error, args ...any) {
	if errors.Is(err, ErrShareNotMounted) {
		if !k.shareMissing.Swap(true) {
			k.Logger.Error("share not mounted: this host's VMs are not recorded in the catalog until it is", "host", k.Host, "error", err)
		}
		return
	}
	k.Logger.Error(msg, append(args, "host", k.Host, "error", err)...)
}

// Reconcile checks every domain defined here against the catalog.
func (k *Keeper) Reconcile(ctx context.Context) error {
	domains, err := k.Hypervisor.Domains(ctx)
	if err != nil {
		return fmt.Errorf("list domains on %s: %w", k.Host, err)
	}
	var errs []error
	for _, d := range domains {
		if err := k.check(ctx, d.UUID); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (k *Keeper) apply(ctx context.Context, e DomainEvent) error {
	switch e.Kind {
	case DomainMigratedIn:
		if err := k.takeOver(ctx, e.UUID); err != nil {
			return err
		}
		return k.check(ctx, e.UUID)
	case DomainUndefined:
		time.AfterFunc(cmp.Or(k.ForgetGrace, 15*time.Second), func() {
			if err := k.forget(ctx, e.UUID); err != nil && ctx.Err() == nil {
				k.logError("forget undefined VM", err, "vm", e.Name)
			}
		})
		return nil
	case DomainMigratedOut:
		// The new host takes the VM over; this host's leftover definition goes at the next check after that.
		return nil
	}
	return k.check(ctx, e.UUID)
}

// check brings one domain and its catalog entry in line: see Keeper.
func (k *Keeper) check(ctx context.Context, uuid string) error {
	state, err := k.Hypervisor.State(ctx, uuid)
	if err != nil || state == types.DomainNotFound {
		return err
	}
	xml, err := k.Hypervisor.InactiveXML(ctx, uuid)
	if err != nil {
		return err
	}
	rec, err := domainxml.Parse(xml)
	if err != nil {
		return err
	}
	var current CatalogEntry
	_, err = k.Catalog.Update(ctx, uuid, func(e *CatalogEntry, exists bool) (Change, error) {
		current = *e
		switch {
		case !exists && !rec.Policy.Enabled:
			return Keep, nil
		case !exists:
			rec.Owner, rec.Generation, rec.UpdatedAt = k.Host, 1, time.Now().UTC()
			*e = CatalogEntry{VMRecord: rec, XML: xml}
		case e.Owner != k.Host, e.XML == xml:
			return Keep, nil
		default:
			e.Name, e.MemoryMiB, e.VCPUs, e.Policy, e.XML, e.UpdatedAt = rec.Name, rec.MemoryMiB, rec.VCPUs, rec.Policy, xml, time.Now().UTC()
		}
		current = *e
		k.Logger.Info("catalog updated", "vm", rec.Name, "vm_uuid", uuid, "host", k.Host, "generation", e.Generation, "ha", rec.Policy.Enabled)
		return Write, nil
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return err
	case current.Owner != k.Host:
		return k.foreign(ctx, current.VMRecord, state)
	case current.Policy.Enabled:
		return k.noAutostart(ctx, current.VMRecord)
	}
	return nil
}

// foreign handles a domain of a VM the catalog gives to another host: a leftover definition is dropped, a copy
// that runs is a stray. A domain mid-migration is left alone: the migration settles it.
func (k *Keeper) foreign(ctx context.Context, owned types.VMRecord, state types.DomainState) error {
	switch state {
	case types.DomainMigrating:
		return nil
	case types.DomainShutoff:
		k.Logger.Warn("dropping stale definition: the VM belongs to another host", "vm", owned.Name, "vm_uuid", owned.UUID,
			"owner", owned.Owner, "generation", owned.Generation, "host", k.Host)
		return k.Hypervisor.Undefine(ctx, owned.UUID)
	}
	k.Logger.Error("stray copy: the VM runs here but the catalog gives it to another host", "vm", owned.Name, "vm_uuid", owned.UUID,
		"owner", owned.Owner, "generation", owned.Generation, "host", k.Host, "state", state)
	if k.Strays == nil {
		return nil
	}
	return k.Strays.ReportStray(ctx, types.StrayCopy{VM: owned.Name, UUID: owned.UUID, Host: k.Host, Owner: owned.Owner,
		Generation: owned.Generation})
}

// noAutostart turns libvirt's autostart off on an HA VM this host owns, saying so if it was on.
func (k *Keeper) noAutostart(ctx context.Context, owned types.VMRecord) error {
	wasOn, err := k.Hypervisor.DisableAutostart(ctx, owned.UUID)
	if err != nil {
		return fmt.Errorf("disable autostart of %s: %w", owned.Name, err)
	}
	if wasOn {
		k.Logger.Warn("autostart turned off on an HA VM: vmha restarts it, libvirtd must not", "vm", owned.Name, "host", k.Host)
	}
	return nil
}

// takeOver records that a VM arrived here by live migration: it now belongs to this host, one generation later,
// so a recovery of the old host can no longer claim it. A VM some recovery is claiming is not taken over: the
// copy here is then a stray, and check reports it.
func (k *Keeper) takeOver(ctx context.Context, uuid string) error {
	_, err := k.Catalog.Update(ctx, uuid, func(e *CatalogEntry, exists bool) (Change, error) {
		if !exists || e.Owner == k.Host || e.Phase != types.PhaseOwned {
			return Keep, nil
		}
		k.Logger.Info("VM migrated here: taken over", "vm", e.Name, "vm_uuid", uuid, "from", e.Owner, "host", k.Host, "generation", e.Generation+1)
		e.Owner, e.Generation, e.UpdatedAt = k.Host, e.Generation+1, time.Now().UTC()
		return Write, nil
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// forget removes a VM that was undefined on the host that owns it and is still gone after the grace. VMs owned
// elsewhere (a compensation, a stale copy, a migration's source after its new host took over) stay.
func (k *Keeper) forget(ctx context.Context, uuid string) error {
	if state, err := k.Hypervisor.State(ctx, uuid); err != nil || state != types.DomainNotFound {
		return err
	}
	_, err := k.Catalog.Update(ctx, uuid, func(e *CatalogEntry, exists bool) (Change, error) {
		if !exists || e.Owner != k.Host || e.Phase != types.PhaseOwned {
			return Keep, nil
		}
		k.Logger.Info("VM undefined on its owner: removed from catalog", "vm", e.Name, "vm_uuid", uuid, "host", k.Host)
		return Remove, nil
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}
