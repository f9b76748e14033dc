package activities_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"google.golang.org/protobuf/types/known/timestamppb"

	"vmha/activities"
	"vmha/types"
)

// pollingClient answers DescribeTaskQueue as if the host's worker polled a moment ago; nothing else is used.
type pollingClient struct{ client.Client }

func (pollingClient) DescribeTaskQueue(context.Context, string, enumspb.TaskQueueType) (*workflowservice.DescribeTaskQueueResponse, error) {
	return &workflowservice.DescribeTaskQueueResponse{Pollers: []*taskqueuepb.PollerInfo{{LastAccessTime: timestamppb.Now()}}}, nil
}

// fakePower is a BMC whose chassis state the test sets.
type fakePower struct {
	mu    sync.Mutex
	state types.PowerState
	// next readings, before state again
	next     []types.PowerState
	readings int
}

func (f *fakePower) count() int { f.mu.Lock(); defer f.mu.Unlock(); return f.readings }

func (f *fakePower) set(s types.PowerState) { f.mu.Lock(); f.state = s; f.mu.Unlock() }

func (f *fakePower) PowerStatus(context.Context, types.BMCSpec, string) (types.PowerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readings++
	if len(f.next) > 0 {
		s := f.next[0]
		f.next = f.next[1:]
		return s, nil
	}
	return f.state, nil
}

func (f *fakePower) PowerOff(context.Context, types.BMCSpec, string) error {
	f.set(types.PowerOff)
	return nil
}

type watchFixture struct {
	env   *testsuite.TestActivityEnvironment
	power *fakePower
	spec  types.HostSpec
	ln    net.Listener
}

func newWatchFixture(t *testing.T) *watchFixture { return newWatchFixtureWith(t, nil) }

// newWatchFixtureWith lets a test change the probe settings first.
func newWatchFixtureWith(t *testing.T, settings func(*activities.ProbeSettings)) *watchFixture {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Setenv("VMHA_TEST_BMC_PASSWORD", "secret")
	power := &fakePower{state: types.PowerOn}
	c := &activities.Controller{
		Client: pollingClient{}, Power: power, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Probe: activities.ProbeSettings{Interval: 20 * time.Millisecond, NetworkTimeout: 50 * time.Millisecond, BMCTimeout: time.Second,
			MissesBeforeSuspect: 1, MissesBeforeDead: 3, MissesBeforeUnreachable: 3, PowerConfirmations: 2, WorkerGrace: time.Minute, BMCIdleInterval: time.Second},
	}
	if settings != nil {
		settings(&c.Probe)
	}
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestActivityEnvironment()
	env.RegisterActivity(c)
	spec := types.HostSpec{Name: "hv1", Address: "127.0.0.1", ProbePort: ln.Addr().(*net.TCPAddr).Port,
		BMC: types.BMCSpec{Address: "127.0.0.1", User: "admin", PasswordEnv: "VMHA_TEST_BMC_PASSWORD"}}
	return &watchFixture{env: env, power: power, spec: spec, ln: ln}
}

func (f *watchFixture) watch(t *testing.T, last types.Probe, watchFor time.Duration) types.Probe {
	t.Helper()
	val, err := f.env.ExecuteActivity("WatchHost", activities.WatchInput{Spec: f.spec, Last: last, WatchFor: watchFor})
	if err != nil {
		t.Fatal(err)
	}
	var p types.Probe
	if err := val.Get(&p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWatchHostReportsFirstProbeAtOnce(t *testing.T) {
	f := newWatchFixture(t)
	p := f.watch(t, types.Probe{}, time.Minute)
	if p.Reach != types.ReachUp || p.Power != types.PowerOn || !p.WorkerAlive {
		t.Fatalf("first probe %+v, want up/on/worker", p)
	}
}

// TestWatchHostFollowsPowerLoss: the network goes away and the BMC says off: the watch reports failing, then
// down with power off, the combination the monitor declares dead.
func TestWatchHostFollowsPowerLoss(t *testing.T) {
	f := newWatchFixture(t)
	last := f.watch(t, types.Probe{}, time.Minute)
	f.ln.Close()
	f.power.set(types.PowerOff)
	var seen []string
	for i := 0; i < 5 && !(last.Reach == types.ReachDown && last.Power == types.PowerOff); i++ {
		last = f.watch(t, last, time.Minute)
		seen = append(seen, last.Key())
	}
	if last.Reach != types.ReachDown || last.Power != types.PowerOff {
		t.Fatalf("watch never reported down/off; saw %v", seen)
	}
}

// defaultRules are the default thresholds: with the BMC confirming off two misses make the network down; with power
// on, three make a host suspect and eight unreachable.
func defaultRules(p *activities.ProbeSettings) {
	p.MissesBeforeSuspect, p.MissesBeforeDead, p.MissesBeforeUnreachable = 3, 2, 8
}

// TestWatchHostReportsAPowerLossOnceComplete (issue 11): the probe after the first miss comes at once and reads the
// BMC back to back alongside its connect until the "off" is confirmed, so the second miss completes the evidence: the
// watch reports one change, straight from up/on to down/off, with how long the network has been silent.
func TestWatchHostReportsAPowerLossOnceComplete(t *testing.T) {
	const interval = 2 * time.Second
	f := newWatchFixtureWith(t, func(p *activities.ProbeSettings) { defaultRules(p); p.Interval = interval })
	last := f.watch(t, types.Probe{}, time.Minute)
	f.ln.Close()
	f.power.set(types.PowerOff)
	before := f.power.count()
	begin := time.Now()
	p := f.watch(t, last, time.Minute)
	if took := time.Since(begin); took >= interval {
		t.Fatalf("the power loss was reported after %s: the probe after the first miss waited for the %s tick", took, interval)
	}
	if p.Reach != types.ReachDown || p.Power != types.PowerOff {
		t.Fatalf("first report after the power loss: %s, want down/off at once", p.Key())
	}
	if p.Unreachable <= 0 {
		t.Fatalf("report of a down network says it has been silent for %s", p.Unreachable)
	}
	// The probe right after the first miss reads "off" twice, back to back, alongside its connect: confirmed.
	if n := f.power.count() - before; n != 2 {
		t.Fatalf("%d BMC readings from the first miss to the report, want 2 (back to back, alongside the second connect)", n)
	}
}

// TestWatchHostWaitsLongerWhilePowerIsOn (issue 11): with the BMC saying on, the same two misses that complete a
// death decide nothing: the host is suspect after MissesBeforeSuspect and unreachable (isolated) only after
// MissesBeforeUnreachable, so a short stall raises no alert.
func TestWatchHostWaitsLongerWhilePowerIsOn(t *testing.T) {
	f := newWatchFixtureWith(t, defaultRules)
	last := f.watch(t, types.Probe{}, time.Minute)
	f.ln.Close()
	suspect := f.watch(t, last, time.Minute)
	if suspect.Reach != types.ReachFailing || suspect.Power != types.PowerOn {
		t.Fatalf("first report with power on: %s, want failing/on", suspect.Key())
	}
	down := f.watch(t, suspect, time.Minute)
	if down.Reach != types.ReachDown || down.Power != types.PowerOn {
		t.Fatalf("second report with power on: %s, want down/on", down.Key())
	}
	// Five more misses after the watch resumed at three, each at least one interval after the last.
	if min := 5 * 20 * time.Millisecond; down.Unreachable < min {
		t.Fatalf("down after %s of silence, want at least %s (eight misses)", down.Unreachable, min)
	}
}

// TestWatchHostResumesWithoutFlapping: a new watch of a host already seen unreachable with power on must not
// report it merely failing (that flapped isolated <-> suspect at every watch): it stays quiet until WatchFor.
func TestWatchHostResumesWithoutFlapping(t *testing.T) {
	f := newWatchFixture(t)
	f.ln.Close()
	isolated := types.Probe{Reach: types.ReachDown, Power: types.PowerOn, WorkerAlive: true, At: time.Now()}
	p := f.watch(t, isolated, 500*time.Millisecond)
	if p.Key() != isolated.Key() {
		t.Fatalf("resumed watch reported %s, want the unchanged %s", p.Key(), isolated.Key())
	}
}

// TestWatchHostConfirmsPowerChanges: one odd BMC reading does not count; PowerConfirmations equal ones do.
func TestWatchHostConfirmsPowerChanges(t *testing.T) {
	f := newWatchFixture(t)
	f.ln.Close()
	isolated := types.Probe{Reach: types.ReachDown, Power: types.PowerOn, WorkerAlive: true, At: time.Now()}
	f.power.next = []types.PowerState{types.PowerOff}
	if p := f.watch(t, isolated, 500*time.Millisecond); p.Key() != isolated.Key() {
		t.Fatalf("a single off reading changed the probe to %s", p.Key())
	}
	f.power.set(types.PowerFault)
	if p := f.watch(t, isolated, time.Minute); p.Power != types.PowerFault || p.Reach != types.ReachDown {
		t.Fatalf("got %+v, want down with power fault after confirmed readings", p)
	}
}

// TestWatchHostFirstReadingIsConfirmed: a new watch (a new monitor, a re-applied spec, the end of maintenance)
// whose first BMC reading is a stale "off" must not report it: readings must agree first, and "on" wins.
func TestWatchHostFirstReadingIsConfirmed(t *testing.T) {
	f := newWatchFixture(t)
	f.ln.Close()
	f.power.next = []types.PowerState{types.PowerOff}
	if p := f.watch(t, types.Probe{}, time.Minute); p.Power != types.PowerOn {
		t.Fatalf("first report %s: a single stale off reading counted", p.Key())
	}
}

// TestWatchHostOnVetoesDead: once a host is seen down with power off, a single "on" reading counts at once.
func TestWatchHostOnVetoesDead(t *testing.T) {
	f := newWatchFixture(t)
	f.ln.Close()
	f.power.set(types.PowerOff)
	f.power.next = []types.PowerState{types.PowerOn}
	dead := types.Probe{Reach: types.ReachDown, Power: types.PowerOff, WorkerAlive: true, At: time.Now()}
	if p := f.watch(t, dead, 500*time.Millisecond); p.Power != types.PowerOn {
		t.Fatalf("got %s after an on reading, want power on", p.Key())
	}
}

// TestWatchHostPowerEvidenceIsFresh: an "off" read while the network still answered does not count once the
// network fails: only readings taken after that do.
func TestWatchHostPowerEvidenceIsFresh(t *testing.T) {
	f := newWatchFixture(t)
	f.power.set(types.PowerOff)
	last := f.watch(t, types.Probe{}, time.Minute)
	if last.Power != types.PowerOff || last.Reach != types.ReachUp {
		t.Fatalf("set-up: got %s, want up/off", last.Key())
	}
	f.ln.Close()
	f.power.next = []types.PowerState{types.PowerOn, types.PowerOn}
	if p := f.watch(t, last, time.Minute); p.Power != types.PowerOn {
		t.Fatalf("first report after the network failed is %s: the off read before it was still counted", p.Key())
	}
}

// TestPowerStatusIsConfirmed: the one-look answer for a failover or a fenced signal needs agreeing readings.
func TestPowerStatusIsConfirmed(t *testing.T) {
	f := newWatchFixture(t)
	f.power.next = []types.PowerState{types.PowerOff}
	val, err := f.env.ExecuteActivity("PowerStatus", f.spec)
	if err != nil {
		t.Fatal(err)
	}
	var state types.PowerState
	if err := val.Get(&state); err != nil {
		t.Fatal(err)
	}
	if state != types.PowerOn {
		t.Fatalf("PowerStatus %s after one off reading then on, want on", state)
	}
}

// switchingClient answers DescribeTaskQueue with no poller until polling is set, then with one that just polled.
type switchingClient struct {
	client.Client
	mu      sync.Mutex
	polling bool
}

func (c *switchingClient) DescribeTaskQueue(context.Context, string, enumspb.TaskQueueType) (*workflowservice.DescribeTaskQueueResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.polling {
		return &workflowservice.DescribeTaskQueueResponse{}, nil
	}
	return &workflowservice.DescribeTaskQueueResponse{Pollers: []*taskqueuepb.PollerInfo{{LastAccessTime: timestamppb.Now()}}}, nil
}

// TestWatchHostSeesReturningWorkerQuickly: a host whose worker was gone and polls again is reported alive within
// seconds, not after a third of the worker grace (30 s by default).
func TestWatchHostSeesReturningWorkerQuickly(t *testing.T) {
	f := newWatchFixture(t)
	sc := &switchingClient{}
	c := &activities.Controller{Client: sc, Power: f.power, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Probe: activities.ProbeSettings{Interval: 20 * time.Millisecond, NetworkTimeout: 50 * time.Millisecond, BMCTimeout: time.Second,
			MissesBeforeSuspect: 1, MissesBeforeDead: 3, MissesBeforeUnreachable: 3, PowerConfirmations: 2, WorkerGrace: time.Minute, BMCIdleInterval: time.Second}}
	var suite testsuite.WorkflowTestSuite
	f.env = suite.NewTestActivityEnvironment()
	f.env.RegisterActivity(c)
	first := f.watch(t, types.Probe{}, time.Minute)
	if first.WorkerAlive {
		t.Fatalf("set-up: %s, want no worker", first.Key())
	}
	time.AfterFunc(200*time.Millisecond, func() { sc.mu.Lock(); sc.polling = true; sc.mu.Unlock() })
	began := time.Now()
	p := f.watch(t, first, 8*time.Second)
	if !p.WorkerAlive {
		t.Fatalf("after %s the watch still reports %s: the returning worker was not looked up again", time.Since(began).Round(time.Millisecond), p.Key())
	}
}

// heartbeatsOf is a share whose heartbeats the test writes.
type heartbeatsOf map[string]types.Heartbeat

func (h heartbeatsOf) ReadHeartbeat(_ context.Context, host string) (types.Heartbeat, error) {
	hb, ok := h[host]
	if !ok {
		return types.Heartbeat{}, activities.ErrNotFound
	}
	return hb, nil
}

// TestHostListTakesFreshStatsFromHeartbeats (issue 11): a healthy host's stats come from its storage heartbeat when
// they are at most 10 s old; stale ones, ones from a clock far ahead, another host's, and those of a host that is not
// healthy are not taken, so a recovery asks those hosts itself.
func TestHostListTakesFreshStatsFromHeartbeats(t *testing.T) {
	now := time.Now()
	stats := func(host string, age time.Duration) *types.HostStats {
		return &types.HostStats{Host: host, MemoryFreeMiB: 2048, SharedStorageOK: true, SampledAt: now.Add(-age)}
	}
	beats := heartbeatsOf{
		"fresh":   {Host: "fresh", Stats: stats("fresh", time.Second)},
		"stale":   {Host: "stale", Stats: stats("stale", time.Minute)},
		"ahead":   {Host: "ahead", Stats: stats("ahead", -time.Minute)},
		"other":   {Host: "other", Stats: stats("someone", time.Second)},
		"none":    {Host: "none"},
		"suspect": {Host: "suspect", Stats: stats("suspect", time.Second)},
	}
	var hosts []types.Candidate
	for _, h := range []string{"fresh", "stale", "ahead", "other", "none", "missing", "suspect"} {
		state := types.HostHealthy
		if h == "suspect" {
			state = types.HostSuspect
		}
		hosts = append(hosts, types.Candidate{Spec: types.HostSpec{Name: h}, State: state})
	}
	c := &activities.Controller{Heartbeats: beats, Probe: activities.ProbeSettings{BMCTimeout: time.Second}}
	activities.StatsFromHeartbeats(c, context.Background(), hosts)
	for _, h := range hosts {
		got := !h.Stats.SampledAt.IsZero()
		if want := h.Spec.Name == "fresh"; got != want {
			t.Errorf("%s: stats taken = %t, want %t (%+v)", h.Spec.Name, got, want, h.Stats)
		}
	}
}

// TestProbeBudgetStretchesTheInterval (issue 11): up to Budget x Interval hosts each is probed every Interval; a
// larger fleet is probed less often, so the controller spends Budget probes a second, and never less often than
// every 2 s; without a budget, every Interval.
func TestProbeBudgetStretchesTheInterval(t *testing.T) {
	p := activities.ProbeSettings{Interval: 100 * time.Millisecond, Budget: 4000}
	for _, c := range []struct {
		hosts int64
		want  time.Duration
	}{{1, 100 * time.Millisecond}, {400, 100 * time.Millisecond}, {1000, 250 * time.Millisecond},
		{5000, 1250 * time.Millisecond}, {100000, 2 * time.Second}} {
		if got := activities.ProbeIntervalFor(p, c.hosts); got != c.want {
			t.Errorf("%d hosts: interval %s, want %s", c.hosts, got, c.want)
		}
	}
	p.Budget = 0
	if got := activities.ProbeIntervalFor(p, 100000); got != p.Interval {
		t.Errorf("no budget, 100000 hosts: interval %s, want %s", got, p.Interval)
	}
}
