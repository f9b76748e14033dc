package workflows

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/testsuite"

	"vmha/activities"
	"vmha/types"
)

type placeResult struct {
	placement types.Placement
	err       error
}

// placementHosts makes the controller's PlacementHosts list the fake cluster's hosts as the scheduler sees them,
// counting the looks and keeping what each asked about.
func placementHosts(env *testsuite.TestWorkflowEnvironment, c *cluster, looks *[]activities.PlacementHostsRequest) {
	env.OnActivity(controller.PlacementHosts, mock.Anything, mock.Anything).Return(
		func(_ context.Context, req activities.PlacementHostsRequest) ([]types.PlacementHost, error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			*looks = append(*looks, req)
			out := make([]types.PlacementHost, len(c.hosts))
			for i, h := range c.hosts {
				out[i] = types.PlacementHost{Name: h.Spec.Name, State: h.State, Labels: h.Spec.Labels, Capacity: h.Spec.Capacity, Stats: h.Stats}
			}
			return out, nil
		})
}

// TestSchedulerNeverOvercommits: two hosts fail at once and their recoveries ask for 12 placements together;
// room is 7 VMs per survivor (4096-256 MiB free, 512 MiB each). Every answer counts the others'. The same holds
// when the requests carry the cluster (runs begun before changeSchedulerLooks) as when the scheduler looks itself.
func TestSchedulerNeverOvercommits(t *testing.T) {
	for _, carried := range []bool{false, true} {
		t.Run(fmt.Sprintf("candidates carried %t", carried), func(t *testing.T) {
			env := baseEnv()
			c := newCluster("hv1", "hv2", "hv3", "hv4")
			var looks []activities.PlacementHostsRequest
			placementHosts(env, c, &looks)
			var candidates []types.Candidate
			if carried {
				candidates = c.hosts
			}
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
					send(id, types.PlacementRequest{ReservationID: id, VM: v, FailedHost: failed, Candidates: candidates, Policy: defaultPolicy,
						Exclude: []string{[]string{"hv2", "hv1"}[i%2]}})
				}
				// A retried request gets its first answer, not a second reservation.
				send("res-00-again", types.PlacementRequest{ReservationID: "res-00", VM: vm("vm00", 1, "hv1"), FailedHost: "hv1",
					Candidates: candidates, Policy: defaultPolicy, Exclude: []string{"hv2"}})
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
			// 16 placements at once need one look at the cluster, and none when the requests carry it.
			if want := map[bool]int{false: 1, true: 0}[carried]; len(looks) != want {
				t.Fatalf("%d looks at the cluster, want %d", len(looks), want)
			}
		})
	}
}

// TestSchedulerLooksAgainOnlyWhenItsLookIsOld: placements within a few seconds share one look at the cluster; a
// later one, or one that asks for a look after a given instant, gets a new look, which asks about the VMs reserved
// so far and asks for stats only the healthy hosts whose heartbeat carried none.
func TestSchedulerLooksAgainOnlyWhenItsLookIsOld(t *testing.T) {
	env := baseEnv()
	c := newCluster("hv1", "hv2", "hv3", "hv4")
	c.hosts[0].State = types.HostRecovering
	c.hosts[0].Stats = types.HostStats{}
	hv3Stats := c.hosts[2].Stats
	c.hosts[2].Stats = types.HostStats{}
	var looks []activities.PlacementHostsRequest
	placementHosts(env, c, &looks)
	env.OnActivity(onHost.HostStats, mock.Anything).Return(func(ctx context.Context) (types.HostStats, error) {
		c.record("stats " + hostOf(ctx))
		return hv3Stats, nil
	})
	results := map[string]*placeResult{}
	send := func(id string, freshAfter time.Time) {
		r := &placeResult{}
		results[id] = r
		env.UpdateWorkflow(activities.UpdatePlace, id, &testsuite.TestUpdateCallback{
			OnReject:   func(err error) { r.err = err },
			OnAccept:   func() {},
			OnComplete: func(v interface{}, err error) { r.err = err; r.placement, _ = v.(types.Placement) },
		}, types.PlacementRequest{ReservationID: id, VM: vm(id, 1, "hv1"), FailedHost: "hv1", Policy: defaultPolicy, FreshAfter: freshAfter})
	}
	env.RegisterDelayedCallback(func() { send("a", time.Time{}); send("b", time.Time{}) }, time.Second)
	env.RegisterDelayedCallback(func() { send("c", time.Time{}) }, 3*time.Second)
	env.RegisterDelayedCallback(func() { send("d", time.Time{}) }, time.Minute)
	env.RegisterDelayedCallback(func() { send("e", env.Now()) }, time.Minute+time.Second)
	env.RegisterDelayedCallback(env.CancelWorkflow, 2*time.Minute)
	env.ExecuteWorkflow(Scheduler, activities.SchedulerInput{})

	for id, r := range results {
		if r.err != nil || r.placement.Host == "" {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	if len(looks) != 3 {
		t.Fatalf("%d looks, want 3: one for a, b and c, one for d, one for e", len(looks))
	}
	if got := fmt.Sprint(looks[1].Reserved); got != "[uuid-a uuid-b uuid-c]" {
		t.Fatalf("the second look asked about %s, want the VMs reserved so far", got)
	}
	if got := c.callsWith("stats"); len(got) != 3 || slices.ContainsFunc(got, func(s string) bool { return s != "stats hv3" }) {
		t.Fatalf("stats asked %v, want hv3 (healthy, no stats in its heartbeat) once per look", got)
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

// TestSchedulerAsksAFewHostsWithoutStatsPerLook: when the heartbeats of a large fleet carried no stats, one look
// asks only maxAskedPerLook hosts, so that the scheduler's history does not grow by thousands of events a look.
func TestSchedulerAsksAFewHostsWithoutStatsPerLook(t *testing.T) {
	env := baseEnv()
	var names []string
	for i := range 3 * maxAskedPerLook {
		names = append(names, fmt.Sprintf("hv%03d", i+1))
	}
	c := newCluster(names...)
	stats := c.hosts[0].Stats
	for i := range c.hosts {
		c.hosts[i].Stats = types.HostStats{}
	}
	var looks []activities.PlacementHostsRequest
	placementHosts(env, c, &looks)
	env.OnActivity(onHost.HostStats, mock.Anything).Return(func(ctx context.Context) (types.HostStats, error) {
		c.record("stats " + hostOf(ctx))
		return stats, nil
	})
	var got placeResult
	env.RegisterDelayedCallback(func() {
		env.UpdateWorkflow(activities.UpdatePlace, "a", &testsuite.TestUpdateCallback{
			OnReject:   func(err error) { got.err = err },
			OnAccept:   func() {},
			OnComplete: func(v interface{}, err error) { got.err = err; got.placement, _ = v.(types.Placement) },
		}, types.PlacementRequest{ReservationID: "a", VM: vm("a", 1, "hv001"), FailedHost: "hv001", Policy: defaultPolicy})
	}, time.Second)
	env.RegisterDelayedCallback(env.CancelWorkflow, time.Minute)
	env.ExecuteWorkflow(Scheduler, activities.SchedulerInput{})
	if got.err != nil || got.placement.Host == "" {
		t.Fatalf("placement %+v", got)
	}
	if asked := c.callsWith("stats"); len(asked) != maxAskedPerLook {
		t.Fatalf("one look asked %d hosts for stats, want %d", len(asked), maxAskedPerLook)
	}
}
