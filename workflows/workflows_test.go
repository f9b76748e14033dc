package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
	"vmha/workflows/placement"
)

// cluster is a fake world behind mocked activities: hosts, their stats and a catalog, and a record of every call.
type cluster struct {
	mu       sync.Mutex
	hosts    []types.Candidate
	vms      []types.VMRecord
	failOn   map[string]string // "start@hv2" -> error text
	calls    []string          // "define vm1@hv2", in order
	events   []types.Event
	placed   []types.PlacementRequest
	reserved []types.Reservation
	// power is what each host's BMC says (default off); listedBy the workflow IDs that listed the catalog.
	power      map[string]types.PowerState
	listedBy   []string
	unreadable []types.UnreadableEntry
	// notifyDelay is how long each notification takes to deliver (a slow webhook).
	notifyDelay time.Duration
	// runs says which VMs run where ("name@host"), for DomainState.
	runs map[string]bool
}

func newCluster(hosts ...string) *cluster {
	c := &cluster{failOn: map[string]string{}, power: map[string]types.PowerState{}, runs: map[string]bool{}}
	for i, h := range hosts {
		c.hosts = append(c.hosts, types.Candidate{
			Spec:  types.HostSpec{Name: h, Address: fmt.Sprintf("10.0.0.%d", i+1)},
			State: types.HostHealthy,
			Stats: types.HostStats{Host: h, CPULoad: 0.1 * float64(i), CPUs: 4, MemoryTotalMiB: 8192, MemoryFreeMiB: 4096,
				SharedStorageOK: true, SampledAt: time.Unix(1000, 0)},
		})
	}
	return c
}

func (c *cluster) record(call string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

func (c *cluster) callsWith(prefix string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, call := range c.calls {
		if strings.HasPrefix(call, prefix) {
			out = append(out, call)
		}
	}
	return out
}

func (c *cluster) eventKinds() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		if e.Kind == types.EventHostState {
			out = append(out, string(e.To))
		} else {
			out = append(out, string(e.Kind))
		}
	}
	return out
}

// stateChain orders host.state events by time and, within one instant, along From -> To: notifications are
// delivered concurrently, so their arrival order says nothing.
func (c *cluster) stateChain() []string {
	c.mu.Lock()
	var left []types.Event
	for _, e := range c.events {
		if e.Kind == types.EventHostState {
			left = append(left, e)
		}
	}
	c.mu.Unlock()
	slices.SortStableFunc(left, func(a, b types.Event) int { return a.At.Compare(b.At) })
	var chain []string
	prev := types.HostState("")
	for len(left) > 0 {
		i := slices.IndexFunc(left, func(e types.Event) bool { return e.From == prev })
		if i < 0 {
			return append(chain, fmt.Sprintf("broken chain after %q", prev))
		}
		prev = left[i].To
		chain = append(chain, string(prev))
		left = slices.Delete(left, i, i+1)
	}
	return chain
}

func sameElements(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// change applies f to the fake catalog's entry of uuid.
func (c *cluster) change(uuid string, f func(vm *types.VMRecord) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.vms {
		if c.vms[i].UUID == uuid {
			return f(&c.vms[i])
		}
	}
	return temporal.NewNonRetryableApplicationError("no such VM "+uuid, types.ErrTypeMoved, nil)
}

// holds checks a host step's token against the fake catalog.
func (c *cluster) holds(tok types.Ownership) error {
	return c.change(tok.UUID, func(vm *types.VMRecord) error {
		if vm.Token() != tok {
			return temporal.NewNonRetryableApplicationError(fmt.Sprintf("token %+v, catalog %+v", tok, vm.Token()), types.ErrTypeMoved, nil)
		}
		return nil
	})
}

func (c *cluster) nameOf(uuid string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, vm := range c.vms {
		if vm.UUID == uuid {
			return vm.Name
		}
	}
	return uuid
}

// hostOf is the host whose task queue an activity was sent to.
func hostOf(ctx context.Context) string {
	return strings.TrimPrefix(activity.GetInfo(ctx).TaskQueue, "vmha-host-")
}

func (c *cluster) step(ctx context.Context, step, uuid string) error {
	host := hostOf(ctx)
	c.record(fmt.Sprintf("%s %s@%s", step, c.nameOf(uuid), host))
	if msg, ok := c.failOn[step+"@"+host]; ok {
		switch msg {
		case "moved":
			return temporal.NewNonRetryableApplicationError("catalog moved", types.ErrTypeMoved, nil)
		case "committed":
			return temporal.NewNonRetryableApplicationError("committed here", types.ErrTypeCommitted, nil)
		}
		return temporal.NewApplicationError(msg, "Test")
	}
	return nil
}

// baseEnv is a test environment with every workflow and activity registered and quiet logs.
func baseEnv() *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	suite.SetLogger(quietLogger{})
	env := suite.NewTestWorkflowEnvironment()
	Register(env)
	env.RegisterActivity(&activities.Controller{})
	env.RegisterActivity(&activities.Host{})
	env.RegisterActivity(&activities.Share{})
	return env
}

// newEnv registers every workflow and mocks every activity onto the fake cluster.
func newEnv(t *testing.T, c *cluster, policy types.Policy) *testsuite.TestWorkflowEnvironment {
	env := baseEnv()
	env.OnActivity(controller.LoadPolicy, mock.Anything).Return(policy, nil)
	env.OnActivity(controller.Notify, mock.Anything, mock.Anything).Return(func(_ context.Context, e types.Event) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.events = append(c.events, e)
		return nil
	}).After(c.notifyDelay)
	env.OnActivity(controller.ListHosts, mock.Anything).Return(func(context.Context) ([]types.Candidate, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		out := make([]types.Candidate, len(c.hosts))
		for i, h := range c.hosts {
			out[i] = types.Candidate{Spec: h.Spec, State: h.State}
		}
		return out, nil
	})
	env.OnActivity(onHost.HostStats, mock.Anything).Return(func(ctx context.Context) (types.HostStats, error) {
		c.record("stats " + hostOf(ctx))
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, h := range c.hosts {
			if h.Spec.Name == hostOf(ctx) {
				return h.Stats, nil
			}
		}
		return types.HostStats{}, errors.New("no such host")
	})
	env.OnActivity(onShare.ListVMs, mock.Anything, mock.Anything).Return(func(ctx context.Context, owner string) (types.VMListing, error) {
		c.record("list " + owner)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.listedBy = append(c.listedBy, activity.GetInfo(ctx).WorkflowExecution.ID)
		out := types.VMListing{Unreadable: c.unreadable}
		for _, vm := range c.vms {
			if owner == "" || vm.Owner == owner {
				out.VMs = append(out.VMs, vm)
			}
		}
		return out, nil
	})
	env.OnActivity(controller.PowerStatus, mock.Anything, mock.Anything).Return(func(_ context.Context, spec types.HostSpec) (types.PowerState, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if p, ok := c.power[spec.Name]; ok {
			return p, nil
		}
		return types.PowerOff, nil
	})
	env.OnActivity(controller.DescribeHost, mock.Anything, mock.Anything).Return(func(_ context.Context, host string) (types.Candidate, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, h := range c.hosts {
			if h.Spec.Name == host {
				return h, nil
			}
		}
		return types.Candidate{}, errors.New("no such host")
	})
	// Place stands in for the Scheduler workflow's update: the same pure placement, with reservations kept, among
	// the hosts as they are now (the scheduler's own look), or the snapshot a request of an older run carries.
	env.OnActivity(controller.Place, mock.Anything, mock.Anything).Return(func(_ context.Context, req types.PlacementRequest) (types.Placement, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.placed = append(c.placed, req)
		hosts := req.Candidates
		if len(hosts) == 0 {
			hosts = c.hosts
		}
		p := placement.Choose(req, hosts, c.reserved)
		if p.Host != "" {
			c.reserved = append(c.reserved, types.Reservation{ID: req.ReservationID, Host: p.Host, VMUUID: req.VM.UUID,
				MemoryMiB: req.VM.MemoryMiB, VCPUs: req.VM.VCPUs})
		}
		return p, nil
	})
	env.OnActivity(controller.Release, mock.Anything, mock.Anything).Return(nil)
	// The host steps follow the ownership protocol on the fake catalog (c.vms): a step whose token no longer
	// matches the catalog fails as CatalogMoved, like the real activities.
	env.OnActivity(onHost.Claim, mock.Anything, mock.Anything).Return(func(ctx context.Context, from types.Ownership) (types.Ownership, error) {
		if err := c.step(ctx, "claim", from.UUID); err != nil {
			return types.Ownership{}, err
		}
		claim := types.Ownership{UUID: from.UUID, Owner: hostOf(ctx), Generation: from.Generation + 1}
		return claim, c.change(from.UUID, func(vm *types.VMRecord) error {
			switch {
			case vm.Token() == claim && vm.Phase == types.PhaseStarting:
				return nil
			case vm.Token() != from:
				return temporal.NewNonRetryableApplicationError("claim: catalog moved", types.ErrTypeMoved, nil)
			}
			vm.Owner, vm.Generation, vm.Phase, vm.ClaimedFrom = claim.Owner, claim.Generation, types.PhaseStarting, from.Owner
			return nil
		})
	})
	env.OnActivity(onHost.DefineFromCatalog, mock.Anything, mock.Anything).Return(func(ctx context.Context, tok types.Ownership) error {
		if err := c.holds(tok); err != nil {
			return err
		}
		return c.step(ctx, "define", tok.UUID)
	})
	env.OnActivity(onHost.StartDomain, mock.Anything, mock.Anything).Return(func(ctx context.Context, tok types.Ownership) error {
		if err := c.holds(tok); err != nil {
			return err
		}
		return c.step(ctx, "start", tok.UUID)
	})
	env.OnActivity(onHost.DomainState, mock.Anything, mock.Anything).Return(func(ctx context.Context, uuid string) (types.DomainState, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch msg, ok := c.failOn["state@"+hostOf(ctx)]; {
		case ok && msg == string(types.DomainMigrating):
			return types.DomainMigrating, nil
		case ok:
			return "", errors.New(msg)
		}
		for _, vm := range c.vms {
			if vm.UUID == uuid && c.runs[vm.Name+"@"+hostOf(ctx)] {
				return types.DomainRunning, nil
			}
		}
		return types.DomainNotFound, nil
	})
	env.OnActivity(onHost.WaitRunning, mock.Anything, mock.Anything).Return(func(ctx context.Context, uuid string) error {
		return c.step(ctx, "running", uuid)
	})
	env.OnActivity(onHost.RemoveDomain, mock.Anything, mock.Anything).Return(func(ctx context.Context, tok types.Ownership) error {
		return c.step(ctx, "remove", tok.UUID)
	})
	env.OnActivity(onHost.CommitOwnership, mock.Anything, mock.Anything).Return(func(ctx context.Context, tok types.Ownership) (types.VMRecord, error) {
		if err := c.step(ctx, "commit", tok.UUID); err != nil {
			return types.VMRecord{}, err
		}
		var out types.VMRecord
		return out, c.change(tok.UUID, func(vm *types.VMRecord) error {
			if vm.Token() != tok {
				return temporal.NewNonRetryableApplicationError("commit: catalog moved", types.ErrTypeMoved, nil)
			}
			vm.Phase, vm.ClaimedFrom = types.PhaseOwned, ""
			out = *vm
			return nil
		})
	})
	env.OnActivity(onShare.ReleaseClaim, mock.Anything, mock.Anything, mock.Anything).Return(func(_ context.Context, claim types.Ownership, from string) (types.Ownership, error) {
		c.record("release " + c.nameOf(claim.UUID) + "@" + claim.Owner)
		back := types.Ownership{UUID: claim.UUID, Owner: from, Generation: claim.Generation + 1}
		return back, c.change(claim.UUID, func(vm *types.VMRecord) error {
			switch {
			case vm.Token() == back && vm.Phase == types.PhaseOwned:
				return nil
			case vm.Token() != claim || vm.Phase != types.PhaseStarting:
				return temporal.NewNonRetryableApplicationError("release: catalog moved", types.ErrTypeMoved, nil)
			}
			vm.Owner, vm.Generation, vm.Phase, vm.ClaimedFrom = from, back.Generation, types.PhaseOwned, ""
			return nil
		})
	})
	return env
}

var defaultPolicy = types.Policy{RecoveryConcurrency: 4, OvercommitRatio: 4, HostReserveMiB: 256, FenceTimeout: time.Minute}

func vm(name string, priority int, owner string) types.VMRecord {
	return types.VMRecord{UUID: "uuid-" + name, Name: name, Owner: owner, Generation: 3, MemoryMiB: 512, VCPUs: 1,
		Policy: types.HAPolicy{Enabled: true, Priority: priority}}
}

var (
	healthyProbe  = types.Probe{Reach: types.ReachUp, Power: types.PowerOn, WorkerAlive: true}
	failingProbe  = types.Probe{Reach: types.ReachFailing, Power: types.PowerOn, WorkerAlive: true}
	isolatedProbe = types.Probe{Reach: types.ReachDown, Power: types.PowerOn}
	deadProbe     = types.Probe{Reach: types.ReachDown, Power: types.PowerOff}
	unknownProbe  = types.Probe{Reach: types.ReachDown, Power: types.PowerUnreachable}
)

// watchReturns makes WatchHost report the probes in order, one a minute of workflow time, then the last one
// again (a steady host) until the test ends.
func watchReturns(env *testsuite.TestWorkflowEnvironment, probes ...types.Probe) {
	var mu sync.Mutex
	env.OnActivity(controller.WatchHost, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.WatchInput) (types.Probe, error) {
		mu.Lock()
		defer mu.Unlock()
		p := probes[0]
		if len(probes) > 1 {
			probes = probes[1:]
		}
		return p, nil
	}).After(time.Minute)
}

func retireAfter(env *testsuite.TestWorkflowEnvironment, d time.Duration) {
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(activities.SignalRetire, "test over") }, d)
}

func monitorInput(host string) activities.MonitorInput {
	return activities.MonitorInput{Spec: types.HostSpec{Name: host, Address: "10.0.0.1"}}
}

func TestMonitorDeadHostIsRecovered(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	env := newEnv(t, c, defaultPolicy)
	watchReturns(env, healthyProbe, failingProbe, deadProbe)
	retireAfter(env, time.Hour)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	want := []string{"healthy", "suspect", "dead", "recovering", "vm.recovery.started", "vm.recovery.done", "host.recovery.done", "recovered"}
	if got := c.eventKinds(); !sameElements(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	if chain := c.stateChain(); strings.Join(chain, ",") != "healthy,suspect,dead,recovering,recovered" {
		t.Fatalf("state chain %v", chain)
	}
	// hv2 has the lowest load among the survivors.
	if got := c.callsWith("commit"); len(got) != 1 || got[0] != "commit web@hv2" {
		t.Fatalf("commits %v, want [commit web@hv2]", got)
	}
	var detection float64
	for _, e := range c.events {
		if e.To == types.HostDead {
			detection = e.Seconds
		}
	}
	// The host left healthy with the failing probe (minute 2) and was declared dead with the next (minute 3).
	if detection != 60 {
		t.Fatalf("detection seconds %v, want 60 (from the first failed probe to dead)", detection)
	}
}

func TestMonitorNeverRecoversIsolatedOrUnknownHost(t *testing.T) {
	for _, p := range []types.Probe{isolatedProbe, unknownProbe} {
		t.Run(string(p.Power), func(t *testing.T) {
			c := newCluster("hv1", "hv2")
			c.vms = []types.VMRecord{vm("web", 1, "hv1")}
			env := newEnv(t, c, defaultPolicy)
			watchReturns(env, healthyProbe, failingProbe, p, p, healthyProbe)
			retireAfter(env, time.Hour)
			env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
			if err := env.GetWorkflowError(); err != nil {
				t.Fatal(err)
			}
			if got := c.callsWith(""); len(got) != 0 {
				t.Fatalf("a non-dead host must not be recovered, but saw %v", got)
			}
			want := []string{"healthy", "suspect", string(Assess(p)), "healthy"}
			if got := c.stateChain(); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("states %v, want %v", got, want)
			}
		})
	}
}

func TestMonitorRecoversOncePerIncident(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	env := newEnv(t, c, defaultPolicy)
	// The host stays dead, then powers back on (recovered until healthy), then dies again: a second incident.
	watchReturns(env, healthyProbe, deadProbe, deadProbe, isolatedProbe, healthyProbe, deadProbe)
	retireAfter(env, time.Hour)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := c.callsWith("list"); len(got) != 2 {
		t.Fatalf("want 2 recoveries (2 incidents), got %d: %v", len(got), c.calls)
	}
}

// TestMonitorFencedSignal: a fenced signal opens the incident of a host the watch still sees healthy, but not a
// second one when the watch saw the manual failover's power-off first.
func TestMonitorFencedSignal(t *testing.T) {
	for _, c := range []struct {
		name   string
		probes []types.Probe
	}{
		{"host still seen healthy", []types.Probe{healthyProbe}},
		{"death already detected and recovered", []types.Probe{healthyProbe, deadProbe}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := newCluster("hv1", "hv2")
			cl.vms = []types.VMRecord{vm("web", 1, "hv1")}
			env := newEnv(t, cl, defaultPolicy)
			watchReturns(env, c.probes...)
			env.RegisterDelayedCallback(func() {
				// The failover began before the watch saw the power-off (at 2 minutes).
				env.SignalWorkflow(activities.SignalFenced, activities.FenceNotice{By: "vmha-failover-hv1", Began: env.Now().Add(-9 * time.Minute)})
			}, 10*time.Minute)
			retireAfter(env, time.Hour)
			env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
			if err := env.GetWorkflowError(); err != nil {
				t.Fatal(err)
			}
			if len(cl.listedBy) != 1 || len(cl.callsWith("commit")) != 1 {
				t.Fatalf("want exactly one recovery, got recoveries %v, calls %v", cl.listedBy, cl.calls)
			}
		})
	}
}

func TestMonitorMaintenancePausesRecovery(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	env := newEnv(t, c, defaultPolicy)
	watchReturns(env, healthyProbe)
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(activities.SignalMaintenance, true) }, 90*time.Second)
	retireAfter(env, time.Hour)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := c.stateChain(); strings.Join(got, ",") != "healthy,maintenance" {
		t.Fatalf("events %v", got)
	}
	if len(c.callsWith("")) != 0 {
		t.Fatalf("nothing may be recovered in maintenance: %v", c.calls)
	}
}

func TestMonitorContinuesAsNewKeepingState(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("web", 1, "hv1")}
	env := newEnv(t, c, defaultPolicy)
	watchReturns(env, healthyProbe, deadProbe, isolatedProbe)
	env.RegisterDelayedCallback(func() { env.SetCurrentHistoryLength(historyLimit + 1) }, 10*time.Minute)
	env.ExecuteWorkflow(HostMonitor, monitorInput("hv1"))
	err := env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	if !errors.As(err, &can) {
		t.Fatalf("want continue-as-new, got %v", err)
	}
	var next activities.MonitorInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	if next.Incident == "" || next.State != types.HostRecovered || next.Spec.Name != "hv1" || next.Last.Key() != isolatedProbe.Key() {
		t.Fatalf("state not carried over: %+v", next)
	}
}

func TestRecoverVMCompensatesAndTriesNextHost(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("db", 5, "hv1")}
	c.failOn["start@hv2"] = "qemu: could not open disk"
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(RecoverVM, RecoverVMInput{FailedHost: "hv1", Incident: "i1", Round: 1, VM: c.vms[0], Policy: defaultPolicy})
	var out types.VMOutcome
	if err := env.GetWorkflowResult(&out); err != nil {
		t.Fatal(err)
	}
	// The failing start is retried (3 attempts) before the target is given up.
	want := "claim db@hv2,define db@hv2,start db@hv2,start db@hv2,start db@hv2,remove db@hv2,release db@hv2," +
		"claim db@hv3,define db@hv3,start db@hv3,running db@hv3,commit db@hv3"
	if got := strings.Join(c.callsWith(""), ","); got != want {
		t.Fatalf("calls\n%s\nwant\n%s", got, want)
	}
	if !out.Recovered || out.Target != "hv3" || out.Attempts != 2 {
		t.Fatalf("outcome %+v", out)
	}
	if ex := c.placed[1].Exclude; len(ex) != 1 || ex[0] != "hv2" {
		t.Fatalf("second placement must exclude hv2, got %v", ex)
	}
}

func TestRecoverVMUnrecoverableReportsReason(t *testing.T) {
	c := newCluster("hv1", "hv2")
	c.vms = []types.VMRecord{vm("big", 1, "hv1")}
	c.vms[0].MemoryMiB = 100000
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(RecoverVM, RecoverVMInput{FailedHost: "hv1", Incident: "i1", Round: 1, VM: c.vms[0], Policy: defaultPolicy})
	var out types.VMOutcome
	if err := env.GetWorkflowResult(&out); err != nil {
		t.Fatal(err)
	}
	if out.Recovered || !strings.Contains(out.Reason, "hv2: needs 100000 MiB") || !strings.Contains(out.Reason, "hv1: it is the failed host") {
		t.Fatalf("outcome %+v", out)
	}
	if got := c.eventKinds(); !sameElements(got, []string{"vm.recovery.started", "vm.recovery.failed"}) {
		t.Fatalf("events %v", got)
	}
}

func TestRecoverVMStopsWhenCatalogMoved(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("db", 5, "hv1")}
	c.failOn["claim@hv2"] = "moved"
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(RecoverVM, RecoverVMInput{FailedHost: "hv1", Incident: "i1", Round: 1, VM: c.vms[0], Policy: defaultPolicy})
	var out types.VMOutcome
	if err := env.GetWorkflowResult(&out); err != nil {
		t.Fatal(err)
	}
	if out.Recovered || len(c.placed) != 1 {
		t.Fatalf("a moved VM must not be tried elsewhere: outcome %+v, placements %d", out, len(c.placed))
	}
	// The claim was refused: nothing was claimed, so nothing may be cleaned up (a later recovery may have put the
	// VM on that very host).
	if got := c.callsWith("remove"); len(got) != 0 {
		t.Fatalf("clean-up after a refused claim: %v", got)
	}
}

func TestHostRecoveryInPriorityOrder(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	c.vms = []types.VMRecord{vm("low", 1, "hv1"), vm("high", 9, "hv1"), vm("mid", 5, "hv1"), vm("other", 9, "hv2")}
	policy := defaultPolicy
	policy.RecoveryConcurrency = 1
	env := newEnv(t, c, policy)
	env.ExecuteWorkflow(HostRecovery, HostRecoveryInput{Host: "hv1", Incident: "i1", Round: 1, Cause: "test"})
	var res types.RecoveryResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, call := range c.callsWith("define") {
		order = append(order, strings.Fields(strings.Split(call, "@")[0])[1])
	}
	if strings.Join(order, ",") != "high,mid,low" {
		t.Fatalf("recovery order %v, want high,mid,low", order)
	}
	if len(res.Outcomes) != 3 {
		t.Fatalf("outcomes %+v", res.Outcomes)
	}
}

// TestHostRecoveryPayloadsDoNotGrowWithHosts (issue 10): a recovery lists no hosts and asks none for stats (the
// Scheduler does), and what its children and their placements carry is the same with 3 hosts as with 300.
func TestHostRecoveryPayloadsDoNotGrowWithHosts(t *testing.T) {
	largest := map[int]int{}
	for _, n := range []int{3, 300} {
		var names []string
		for i := range n {
			names = append(names, fmt.Sprintf("hv%d", i+1))
		}
		c := newCluster(names...)
		for i := range 5 {
			c.vms = append(c.vms, vm(fmt.Sprintf("vm%d", i), 1, "hv1"))
		}
		env := newEnv(t, c, defaultPolicy)
		var mu sync.Mutex
		env.SetOnChildWorkflowStartedListener(func(_ *workflow.Info, _ workflow.Context, args converter.EncodedValues) {
			var in RecoverVMInput
			if err := args.Get(&in); err != nil {
				t.Error(err)
			}
			b, _ := json.Marshal(in)
			mu.Lock()
			largest[n] = max(largest[n], len(b))
			mu.Unlock()
		})
		env.ExecuteWorkflow(HostRecovery, HostRecoveryInput{Host: "hv1", Incident: "i1", Round: 1, Cause: "test"})
		var res types.RecoveryResult
		if err := env.GetWorkflowResult(&res); err != nil || !res.Complete() {
			t.Fatalf("%d hosts: %+v, %v", n, res, err)
		}
		if got := c.callsWith("stats"); len(got) != 0 {
			t.Errorf("%d hosts: the recovery asked hosts for stats: %v", n, got)
		}
		for _, req := range c.placed {
			if len(req.Candidates) != 0 {
				t.Fatalf("%d hosts: a placement request carries %d candidates", n, len(req.Candidates))
			}
		}
	}
	if largest[3] == 0 || largest[3] != largest[300] {
		t.Fatalf("largest RecoverVM input: %d bytes with 3 hosts, %d with 300; want the same", largest[3], largest[300])
	}
}

// TestHostRecoverySpreadsWithoutOvercommit: 12 VMs of a dead host onto two survivors with room for 7 each
// (4096-256 MiB free, 512 MiB per VM): each gets 6, none goes past its memory.
func TestHostRecoverySpreadsWithoutOvercommit(t *testing.T) {
	c := newCluster("hv1", "hv2", "hv3")
	for i := 0; i < 12; i++ {
		c.vms = append(c.vms, vm(fmt.Sprintf("vm%02d", i), 1, "hv1"))
	}
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(HostRecovery, HostRecoveryInput{Host: "hv1", Incident: "i1", Round: 1, Cause: "test"})
	var res types.RecoveryResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, o := range res.Outcomes {
		if !o.Recovered {
			t.Fatalf("not recovered: %+v", o)
		}
		per[o.Target]++
	}
	if per["hv2"] != 6 || per["hv3"] != 6 {
		t.Fatalf("placements %v, want 6 on hv2 and 6 on hv3", per)
	}
}

func TestCreateVMRejectsBadInputNamingTheField(t *testing.T) {
	c := newCluster("hv1")
	env := newEnv(t, c, defaultPolicy)
	env.ExecuteWorkflow(CreateVM, types.CreateVMRequest{Name: "ok", Image: "/share/img.qcow2", VCPUs: 0, MemoryMiB: 64})
	err := env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "vcpus 0") {
		t.Fatalf("want an error naming vcpus 0, got %v", err)
	}
	if len(c.calls) != 0 {
		t.Fatalf("bad input must change nothing: %v", c.calls)
	}
}

// quietLogger keeps expected activity failures out of the test output.
type quietLogger struct{}

func (quietLogger) Debug(string, ...interface{}) {}
func (quietLogger) Info(string, ...interface{})  {}
func (quietLogger) Warn(string, ...interface{})  {}
func (quietLogger) Error(string, ...interface{}) {}
