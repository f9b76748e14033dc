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
	// lookMaxAge is how long the scheduler places with one look at the hosts before it takes another. The stats
	// in a look are up to 10 s old anyway (activities.statsMaxAge); reservations cover what they cannot show yet.
	lookMaxAge = 5 * time.Second
	// maxAskedPerLook bounds how many hosts whose heartbeat carried no stats one look asks itself: when the
	// controller cannot read the heartbeats of a large fleet, asking every host would write thousands of events
	// into the scheduler's history at every look. The others have no stats for that look, which keeps them out of
	// its placements.
	maxAskedPerLook = 32
)

// changeSchedulerLooks is the change (workflow.GetVersion) from which the Scheduler looks at the hosts itself and
// recoveries and creations no longer carry a snapshot of the cluster (issue 10). Runs started before it keep
// theirs: their requests carry candidates, and the scheduler places with them as it did.
const changeSchedulerLooks = "scheduler-looks-at-hosts"

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
	// hosts is the last look at the cluster, begun at lookedAt; looking is true while a look is under way. The
	// look is not carried across continue-as-new: the next placement takes a new one.
	hosts    []types.Candidate
	lookedAt time.Time
	looking  bool
}

// place chooses a target and reserves the VM's memory and vCPUs there until the VM runs and stats show it.
// A request whose reservation exists already (a retried activity) gets the same answer.
func (s *scheduler) place(ctx workflow.Context, req types.PlacementRequest) (types.Placement, error) {
	if p, ok := s.answered(req.ReservationID); ok {
		return p, nil
	}
	hosts := req.Candidates
	if len(hosts) == 0 {
		var err error
		if hosts, err = s.look(ctx, req.FreshAfter); err != nil {
			return types.Placement{}, err
		}
		// A retry of this request may have been answered while this one waited for the look.
		if p, ok := s.answered(req.ReservationID); ok {
			return p, nil
		}
	}
	p := placement.Choose(req, hosts, s.reservations)
	if p.Host != "" {
		s.reservations = append(s.reservations, types.Reservation{
			ID: req.ReservationID, Host: p.Host, VMUUID: req.VM.UUID, MemoryMiB: req.VM.MemoryMiB, VCPUs: req.VM.VCPUs,
			Group: req.VM.Policy.Rules.AntiAffinityGroup, CreatedAt: workflow.Now(ctx),
		})
	}
	workflow.GetLogger(ctx).Info("placement", "vm", req.VM.Name, "target", p.Host, "rejected", len(p.Rejected))
	return p, nil
}

// answered returns the answer a request with this reservation ID got already.
func (s *scheduler) answered(id string) (types.Placement, bool) {
	for _, r := range s.reservations {
		if r.ID == id {
			return types.Placement{Host: r.Host, ReservationID: r.ID}, true
		}
	}
	return types.Placement{}, false
}

// look returns the hosts as seen at most lookMaxAge ago and no earlier than freshAfter, taking a new look when
// there is none such: the host list with the stats their storage heartbeats carried, then the stats of every healthy
// host whose heartbeat carried none, asked all at once. A placement waits for a look under way instead of using the
// one before, so that every VM reserved before the look began is among the reservations the look asks about. It
// asks at most maxAskedPerLook hosts.
func (s *scheduler) look(ctx workflow.Context, freshAfter time.Time) ([]types.Candidate, error) {
	if err := workflow.Await(ctx, func() bool { return !s.looking }); err != nil {
		return nil, err
	}
	now := workflow.Now(ctx)
	if s.hosts != nil && now.Sub(s.lookedAt) <= lookMaxAge && !s.lookedAt.Before(freshAfter) {
		return s.hosts, nil
	}
	s.looking = true
	defer func() { s.looking = false }()
	req := activities.PlacementHostsRequest{Reserved: make([]string, 0, len(s.reservations))}
	for _, r := range s.reservations {
		req.Reserved = append(req.Reserved, r.VMUUID)
	}
	var listed []types.PlacementHost
	if err := workflow.ExecuteActivity(says(controllerOptions(ctx), "list the hosts with their states and stats, for placement"),
		controller.PlacementHosts, req).Get(ctx, &listed); err != nil {
		return nil, fmt.Errorf("list the hosts for placement: %w", err)
	}
	hosts := make([]types.Candidate, len(listed))
	asked := make([]workflow.Future, len(listed))
	n := 0
	for i, h := range listed {
		hosts[i] = h.Candidate()
		if h.State == types.HostHealthy && h.Stats.SampledAt.IsZero() && n < maxAskedPerLook {
			n++
			asked[i] = workflow.ExecuteActivity(says(statsOptions(ctx, h.Name), "load and free memory of %s", h.Name), onHost.HostStats)
		}
	}
	for i, f := range asked {
		if f == nil {
			continue
		}
		// A host that does not answer within seconds has no stats, which keeps it out of placement.
		if err := f.Get(ctx, &hosts[i].Stats); err != nil {
			workflow.GetLogger(ctx).Warn("no stats", "host", hosts[i].Spec.Name, "error", err)
		}
	}
	s.hosts, s.lookedAt = hosts, now
	return hosts, nil
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
