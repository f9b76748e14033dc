package workflows

import (
	"fmt"
	"testing"
	"time"

	"go.temporal.io/sdk/testsuite"

	"vmha/activities"
	"vmha/types"
)

type placeResult struct {
	placement types.Placement
	err       error
}

// TestSchedulerNeverOvercommits: two hosts fail at once and their recoveries ask for 12 placements together;
// room is 7 VMs per survivor (4096-256 MiB free, 512 MiB each). Every answer counts the others'.
func TestSchedulerNeverOvercommits(t *testing.T) {
	env := baseEnv()
	c := newCluster("hv1", "hv2", "hv3", "hv4")
	results := map[string]*placeResult{}
	send := func(id string, req types.PlacementRequest) {
		r := &placeResult{}
		results[id] = r
		env.UpdateWorkflow(activities.UpdatePlace, id, &testsuite.TestUpdateCallback{
			OnReject:   func(err error) { r.err = err },
			OnAccept:   func() {},
			OnComplete: func(v interface{}, err error) { r.err = err; r.placement, _ = v.(types.Placement) },
		}, req)
	}
	env.RegisterDelayedCallback(func() {
		for i := 0; i < 16; i++ {
			failed := []string{"hv1", "hv2"}[i%2]
			id := fmt.Sprintf("res-%02d", i)
			v := vm(fmt.Sprintf("vm%02d", i), 1, failed)
			send(id, types.PlacementRequest{ReservationID: id, VM: v, FailedHost: failed, Candidates: c.hosts, Policy: defaultPolicy,
				Exclude: []string{[]string{"hv2", "hv1"}[i%2]}})
		}
		// A retried request gets its first answer, not a second reservation.
		send("res-00-again", types.PlacementRequest{ReservationID: "res-00", VM: vm("vm00", 1, "hv1"), FailedHost: "hv1",
			Candidates: c.hosts, Policy: defaultPolicy, Exclude: []string{"hv2"}})
		// A malformed request is rejected before it reaches history.
		send("bad", types.PlacementRequest{VM: vm("x", 1, "hv1")})
	}, time.Second)
	env.RegisterDelayedCallback(func() {
		env.QueryWorkflow(QueryReservations)
		env.CancelWorkflow()
	}, time.Minute)
	env.ExecuteWorkflow(Scheduler, activities.SchedulerInput{})

	per := map[string]int{}
	unplaced := 0
	for i := 0; i < 16; i++ {
		r := results[fmt.Sprintf("res-%02d", i)]
		if r.err != nil {
			t.Fatalf("res-%02d: %v", i, r.err)
		}
		if r.placement.Host == "" {
			unplaced++
			continue
		}
		per[r.placement.Host]++
	}
	if per["hv3"] != 7 || per["hv4"] != 7 || unplaced != 2 || per["hv1"]+per["hv2"] != 0 {
		t.Fatalf("placements %v and %d unplaced; want 7 on hv3, 7 on hv4, 2 without room", per, unplaced)
	}
	if again := results["res-00-again"]; again.err != nil || again.placement.Host != results["res-00"].placement.Host {
		t.Fatalf("retried request answered %+v, first answer %+v", again, results["res-00"])
	}
	if results["bad"].err == nil {
		t.Fatal("a request without reservation ID was accepted")
	}
}

func TestSchedulerReleaseAndExpiry(t *testing.T) {
	s := &scheduler{}
	now := time.Unix(10000, 0)
	s.reservations = []types.Reservation{
		{ID: "started-long-ago", CreatedAt: now.Add(-time.Hour), ReleasedAt: now.Add(-releasedKeep - time.Second)},
		{ID: "started-just-now", CreatedAt: now.Add(-time.Minute), ReleasedAt: now.Add(-time.Second)},
		{ID: "abandoned", CreatedAt: now.Add(-unreleasedKeep - time.Second)},
		{ID: "in-flight", CreatedAt: now.Add(-time.Minute)},
	}
	s.expire(now)
	var ids []string
	for _, r := range s.reservations {
		ids = append(ids, r.ID)
	}
	if fmt.Sprint(ids) != "[started-just-now in-flight]" {
		t.Fatalf("kept %v", ids)
	}
}
