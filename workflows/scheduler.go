package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
	"vmha/workflows/placement"
)

const (
	// releasedKeep is how long a started VM's reservation still counts: longer than any recovery's stats
	// snapshot can be old, so no placement forgets a VM its stats do not show.
	releasedKeep = 10 * time.Minute
	// unreleasedKeep expires a reservation whose workflow never released it (it was terminated, say).
	unreleasedKeep = time.Hour
	// schedulerHistoryLimit keeps the scheduler's history short; it carries its reservations across.
	schedulerHistoryLimit = 5000
)

// Scheduler is the one place where placements are decided, one at a time, so that VMs placed at once (a whole
// host failing, or two hosts failing together) account for each other and no target is overcommitted.
// Recoveries reach it by Update-with-Start; it lives forever and continues as new with its reservations.
func Scheduler(ctx workflow.Context, in activities.SchedulerInput) error {
	s := &scheduler{reservations: in.Reservations}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, activities.UpdatePlace, s.place,
		workflow.UpdateHandlerOptions{Validator: validatePlacement}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, activities.UpdateRelease, s.release,
		workflow.UpdateHandlerOptions{Validator: validateRelease}); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryReservations, func() ([]types.Reservation, error) {
		return s.reservations, nil
	}); err != nil {
		return err
	}
	for !tooLong(ctx, schedulerHistoryLimit) {
		// Wake up now and then to expire reservations; updates are served meanwhile.
		if _, err := workflow.AwaitWithTimeout(ctx, releasedKeep, func() bool { return tooLong(ctx, schedulerHistoryLimit) }); err != nil {
			return err
		}
		s.expire(workflow.Now(ctx))
	}
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return err
	}
	return workflow.NewContinueAsNewError(ctx, Scheduler, activities.SchedulerInput{Reservations: s.reservations})
}

// QueryReservations lists the capacity the scheduler currently holds back.
const QueryReservations = "reservations"

type scheduler struct {
	reservations []types.Reservation
}

// place chooses a target and reserves the VM's memory and vCPUs there until the VM runs and stats show it.
// A request whose reservation exists already (a retried activity) gets the same answer.
func (s *scheduler) place(ctx workflow.Context, req types.PlacementRequest) (types.Placement, error) {
	for _, r := range s.reservations {
		if r.ID == req.ReservationID {
			return types.Placement{Host: r.Host, ReservationID: r.ID}, nil
		}
	}
	p := placement.Choose(req, s.reservations)
	if p.Host != "" {
		s.reservations = append(s.reservations, types.Reservation{
			ID: req.ReservationID, Host: p.Host, VMUUID: req.VM.UUID, MemoryMiB: req.VM.MemoryMiB, VCPUs: req.VM.VCPUs,
			Group: req.VM.Policy.Rules.AntiAffinityGroup, CreatedAt: workflow.Now(ctx),
		})
	}
	workflow.GetLogger(ctx).Info("placement", "vm", req.VM.Name, "target", p.Host, "rejected", len(p.Rejected))
	return p, nil
}

// release ends a reservation: a started VM stays counted until stats sampled after now include it; a failed
// attempt frees the capacity at once.
func (s *scheduler) release(ctx workflow.Context, req activities.ReleaseRequest) error {
	for i, r := range s.reservations {
		if r.ID != req.ReservationID {
			continue
		}
		if req.Started {
			s.reservations[i].ReleasedAt = workflow.Now(ctx)
		} else {
			s.reservations = append(s.reservations[:i], s.reservations[i+1:]...)
		}
		return nil
	}
	return nil
}

// expire drops reservations no placement needs any more.
func (s *scheduler) expire(now time.Time) {
	kept := s.reservations[:0]
	for _, r := range s.reservations {
		released := !r.ReleasedAt.IsZero() && now.Sub(r.ReleasedAt) > releasedKeep
		abandoned := r.ReleasedAt.IsZero() && now.Sub(r.CreatedAt) > unreleasedKeep
		if !released && !abandoned {
			kept = append(kept, r)
		}
	}
	s.reservations = kept
}

// validatePlacement refuses malformed requests before they reach history.
func validatePlacement(_ workflow.Context, req types.PlacementRequest) error {
	switch {
	case req.ReservationID == "":
		return errors.New("reservationID: empty")
	case req.VM.UUID == "":
		return fmt.Errorf("vm.uuid of %q: empty", req.VM.Name)
	case req.VM.MemoryMiB < 0 || req.VM.VCPUs < 0:
		return fmt.Errorf("vm %s: memoryMiB %d and vcpus %d must not be negative", req.VM.Name, req.VM.MemoryMiB, req.VM.VCPUs)
	}
	return nil
}

func validateRelease(_ workflow.Context, req activities.ReleaseRequest) error {
	if req.ReservationID == "" {
		return errors.New("reservationID: empty")
	}
	return nil
}

// tooLong says a perpetual workflow should continue as new.
func tooLong(ctx workflow.Context, limit int) bool {
	info := workflow.GetInfo(ctx)
	return info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() > limit
}
