package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"vmha/activities/domainxml"
	"vmha/types"
)

// Keeper keeps the catalog current from this host's libvirt: a `virsh edit` or `virsh define` of an HA VM reaches
// the catalog within seconds, and a host coming back after its VMs were recovered elsewhere drops its stale
// definitions so nobody can start a second copy there. It is not an activity: the hypervisor worker runs it.
type Keeper struct {
	Host       string
	Hypervisor Hypervisor
	Ledger     *Ledger
	Logger     *slog.Logger

	// shareMissing is set once the share's absence was logged, so it is said once and not per VM and event.
	shareMissing atomic.Bool
}

// Run reconciles once, then follows libvirt lifecycle events until ctx ends.
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
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			return fmt.Errorf("watch libvirt events on %s: %w", k.Host, err)
		case e := <-events:
			if err := k.apply(ctx, e); err != nil {
				k.logError("catalog update", err, "vm", e.Name, "event", e.Kind)
			}
		}
	}
}

// Resync reconciles and logs the outcome: at start and whenever the share's marker becomes visible again, since
// nothing reached the catalog while it was not.
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

// Reconcile walks every domain defined here against the catalog.
func (k *Keeper) Reconcile(ctx context.Context) error {
	domains, err := k.Hypervisor.Domains(ctx)
	if err != nil {
		return fmt.Errorf("list domains on %s: %w", k.Host, err)
	}
	var errs []error
	for _, d := range domains {
		if err := k.record(ctx, d.UUID, d.State, true); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (k *Keeper) apply(ctx context.Context, e DomainEvent) error {
	switch e.Kind {
	case DomainDefined:
		return k.record(ctx, e.UUID, types.DomainOther, false)
	case DomainUndefined:
		return k.forget(ctx, e.UUID)
	}
	return nil
}

// record writes the domain's current XML when this host owns it (or it is new). A definition of a VM owned by
// another host is either a recovery in progress (the recovery commits ownership itself) or, at start-up, a stale
// copy left from before this host died.
func (k *Keeper) record(ctx context.Context, uuid string, state types.DomainState, startup bool) error {
	xml, err := k.Hypervisor.InactiveXML(ctx, uuid)
	if err != nil {
		return err
	}
	rec, err := domainxml.Parse(xml)
	if err != nil {
		return err
	}
	k.Ledger.mu.Lock()
	defer k.Ledger.mu.Unlock()
	existing, err := k.Ledger.Catalog.Get(ctx, uuid)
	switch {
	case errors.Is(err, ErrNotFound):
		if !rec.Policy.Enabled {
			return nil
		}
		rec.Owner, rec.Generation = k.Host, 1
	case err != nil:
		return err
	case existing.Owner != k.Host:
		if startup && state != types.DomainRunning {
			k.Logger.Warn("dropping stale definition: VM now belongs to another host", "vm", rec.Name, "owner", existing.Owner, "host", k.Host)
			return k.Hypervisor.Undefine(ctx, uuid)
		}
		if startup {
			k.Logger.Error("VM runs here but the catalog gives it to another host", "vm", rec.Name, "owner", existing.Owner, "host", k.Host)
		}
		return nil
	case existing.XML == xml:
		return nil
	default:
		rec.Owner, rec.Generation = existing.Owner, existing.Generation
	}
	rec.UpdatedAt = time.Now().UTC()
	k.Logger.Info("catalog updated", "vm", rec.Name, "uuid", uuid, "host", k.Host, "generation", rec.Generation, "ha", rec.Policy.Enabled)
	return k.Ledger.Catalog.Put(ctx, CatalogEntry{VMRecord: rec, XML: xml})
}

// forget drops a VM an operator undefined on the host that owns it. Undefines of VMs owned elsewhere (a failed
// recovery attempt's compensation, a stale copy) leave the catalog alone.
func (k *Keeper) forget(ctx context.Context, uuid string) error {
	k.Ledger.mu.Lock()
	defer k.Ledger.mu.Unlock()
	existing, err := k.Ledger.Catalog.Get(ctx, uuid)
	if errors.Is(err, ErrNotFound) || (err == nil && existing.Owner != k.Host) {
		return nil
	}
	if err != nil {
		return err
	}
	k.Logger.Info("VM undefined on its owner: removed from catalog", "vm", existing.Name, "uuid", uuid, "host", k.Host)
	return k.Ledger.Catalog.Delete(ctx, uuid)
}
