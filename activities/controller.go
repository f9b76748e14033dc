package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"vmha/types"
)

// ProbeSettings are the controller's probe knobs (from VMHA_* settings).
type ProbeSettings struct {
	Interval            time.Duration
	NetworkTimeout      time.Duration
	BMCTimeout          time.Duration
	MissesBeforeSuspect int
	// MissesBeforeDead is how many consecutive misses make the network down when the BMC confirms the power off or
	// failed: the BMC's word is the strong half of the evidence, so the network needs only to agree.
	MissesBeforeDead int
	// MissesBeforeUnreachable is how many make it down while the power is on or nobody can tell (isolated, hung,
	// unknown): those are alerts or a fence, and a short stall of the controller must not raise them.
	MissesBeforeUnreachable int
	PowerConfirmations      int
	WorkerGrace             time.Duration
	// BMCIdleInterval is how often power is read while the network answers: power only decides anything once
	// the network fails, and then it is read on every tick.
	BMCIdleInterval time.Duration
	// HeartbeatStoppedAfter is how long a host's storage heartbeat counter must stay unchanged, as this controller
	// reads it, before it counts as stopped. An armed watchdog counts as having fenced the host after its timeout
	// plus this margin.
	HeartbeatStoppedAfter time.Duration
	// Budget is how many probes a second this controller spends on all the hosts it watches (0: no limit). Up to
	// Budget x Interval hosts, each is probed every Interval; beyond, less often, so that a large fleet costs the
	// controller (and the server it shares a machine with) what a small one does.
	Budget int
}

// maxBudgetInterval bounds how far the budget stretches a host's probe interval: a power loss is still seen within
// about this long, and the watch still heartbeats well inside its timeout.
const maxBudgetInterval = 2 * time.Second

// interval is the time between two probes of one host while watching hosts in all.
func (p ProbeSettings) interval(hosts int64) time.Duration {
	if p.Budget <= 0 {
		return p.Interval
	}
	return min(max(p.Interval, time.Duration(hosts)*time.Second/time.Duration(p.Budget)), max(p.Interval, maxBudgetInterval))
}

// missesBeforeDown is the number of consecutive misses after which the network counts as down, given the power.
func (p ProbeSettings) missesBeforeDown(power types.PowerState) int {
	if power == types.PowerOff || power == types.PowerFault {
		return p.MissesBeforeDead
	}
	return p.MissesBeforeUnreachable
}

// Controller holds the activities of the controller worker: probes, fencing, placement requests, inventory
// and notifications. Several controller replicas may run; every activity is safe to run on any of them.
type Controller struct {
	Client   client.Client
	Power    PowerController
	Notifier Notifier
	Probe    ProbeSettings
	Policy   types.Policy
	Logger   *slog.Logger
	// Heartbeats reads the hosts' storage heartbeats; nil where the controller does not see the share (no hung or
	// storage-lost verdicts then).
	Heartbeats HeartbeatReader

	// watching counts the WatchHost activities running in this process, for the probe budget.
	watching atomic.Int64
}

// Signal and update names shared by the workflows and the activities that reach them through the client.
const (
	SignalSpec        = "spec"
	SignalMaintenance = "maintenance"
	SignalFenced      = "fenced"
	SignalRetire      = "retire"
	UpdatePlace       = "place"
	UpdateRelease     = "release"
	QueryStatus       = "status"
	MemoSpec          = "spec"
)

// FenceNotice tells a monitor that vmha powered its host off and the BMC confirmed it.
type FenceNotice struct {
	By     string `json:"by"`
	Reason string `json:"reason,omitempty"`
	// Began is when the failover started: a death declared since then already covers it.
	Began time.Time `json:"began,omitempty"`
	// ConfirmedOffBy names the operator who confirmed the host is off when its BMC could not be asked.
	ConfirmedOffBy string `json:"confirmedOffBy,omitempty"`
}

// ReleaseRequest ends a reservation: Started keeps it counted until stats sampled later include the VM.
type ReleaseRequest struct {
	ReservationID string `json:"reservationID"`
	Started       bool   `json:"started"`
}

// MonitorInput starts (or continues) a host monitor.
type MonitorInput struct {
	Spec        types.HostSpec  `json:"spec"`
	State       types.HostState `json:"state,omitempty"`
	Since       time.Time       `json:"since,omitempty"`
	Last        types.Probe     `json:"last,omitempty"`
	Maintenance bool            `json:"maintenance,omitempty"`
	// TroubleSince is when the host left healthy: the start of detection time.
	TroubleSince time.Time `json:"troubleSince,omitempty"`
	// Reason is why the host entered its state, in words.
	Reason string `json:"reason,omitempty"`

	// The current (or last) incident: its ID (types.IncidentID), when and why the host was declared dead, and
	// the last recovery round started for it.
	Incident   string    `json:"incident,omitempty"`
	DeclaredAt time.Time `json:"declaredAt,omitempty"`
	Cause      string    `json:"cause,omitempty"`
	Round      int       `json:"round,omitempty"`
	// RetryAfter is the current back-off between rounds.
	RetryAfter time.Duration `json:"retryAfter,omitempty"`
}

// SchedulerInput starts (or continues) the scheduler with the reservations still counted.
type SchedulerInput struct {
	Reservations []types.Reservation `json:"reservations,omitempty"`
}

// WatchInput asks WatchHost to report as soon as the probe's key differs from Last's, or after WatchFor anyway.
// A zero Last (a new monitor, or a new spec) reports the first probe at once.
type WatchInput struct {
	Spec     types.HostSpec `json:"spec"`
	Last     types.Probe    `json:"last"`
	WatchFor time.Duration  `json:"watchFor"`
}

// WatchHost probes a host until what it sees changes. It heartbeats on every tick (heartbeats add no history)
// and returns only on a change, so a steady host costs six history events per WatchFor.
func (c *Controller) WatchHost(ctx context.Context, in WatchInput) (types.Probe, error) {
	w := c.resumeWatch(in)
	last := ""
	if !in.Last.At.IsZero() {
		last = in.Last.Key()
	}
	deadline := time.Now().Add(in.WatchFor)
	c.watching.Add(1)
	defer c.watching.Add(-1)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		started := time.Now()
		p := w.probe(ctx)
		activity.RecordHeartbeat(ctx, p.Key())
		// A probe with power not yet confirmed is never reported: one BMC reading never counts alone. Nor is a
		// network that has just begun to fail while it cannot decide anything yet: the next probe runs at once,
		// without waiting for the tick, and decides; the monitor hears one change instead of two.
		undecided := w.misses > 0 && w.misses < c.Probe.MissesBeforeDead
		if p.Power != "" && !undecided && (p.Key() != last || time.Now().After(deadline)) {
			return p, nil
		}
		if undecided && ctx.Err() == nil {
			continue
		}
		// Probes start one interval apart, however long each took; the interval follows the budget.
		timer.Reset(time.Until(started.Add(c.Probe.interval(c.watching.Load()))))
		select {
		case <-ctx.Done():
			return types.Probe{}, ctx.Err()
		case <-timer.C:
		}
	}
}

// hostWatch is the memory of one WatchHost run: consecutive misses and power readings.
type hostWatch struct {
	c            *Controller
	spec         types.HostSpec
	misses       int
	missedSince  time.Time        // the first miss of the current run of misses
	power        types.PowerState // confirmed reading; empty until one is
	candidate    types.PowerState // latest reading not yet confirmed
	candidateN   int
	lastPowerAt  time.Time
	workerAlive  bool
	workerSeenAt time.Time
	// The storage heartbeat: the last counter read, its watchdog, and when this controller saw the counter change.
	beat        types.Heartbeat
	beatSeen    bool
	beatChanged time.Time
	beatReadErr bool
}

// resumeWatch starts from what the last watch saw: its misses and its confirmed power reading. A fresh count
// would report an unreachable host as merely failing at the start of every watch, and flap. A zero Last (a new
// monitor, a new spec, the end of maintenance) starts with power unconfirmed: one reading never counts alone.
func (c *Controller) resumeWatch(in WatchInput) *hostWatch {
	w := &hostWatch{c: c, spec: in.Spec}
	if in.Last.At.IsZero() {
		return w
	}
	switch in.Last.Reach {
	case types.ReachDown:
		w.misses = c.Probe.missesBeforeDown(in.Last.Power)
	case types.ReachFailing:
		w.misses = c.Probe.MissesBeforeSuspect
	}
	if w.misses > 0 {
		w.missedSince = time.Now().Add(-in.Last.Unreachable)
	}
	w.power = in.Last.Power
	w.workerAlive = in.Last.WorkerAlive
	if in.Last.Heartbeat != types.HeartbeatUnknown {
		// The time between that probe and this watch is not counted: the heartbeat only looks fresher for it.
		w.beat = types.Heartbeat{Counter: in.Last.BeatCounter, Watchdog: in.Last.Watchdog}
		w.beatSeen, w.beatChanged = true, time.Now().Add(-in.Last.BeatAge)
	}
	return w
}

// probe takes one look at the host: a TCP connect and, when they can matter, the BMC and the storage heartbeat.
// While the network fails, power is read alongside the connect, not after it, and a power change is read again back
// to back until confirmed: the probe right after the first miss (which comes at once) ends with the second connect's
// verdict and a confirmed reading, the whole evidence for "dead", in the time of the slower of the two.
func (w *hostWatch) probe(ctx context.Context) types.Probe {
	failing := w.misses > 0
	var wg sync.WaitGroup
	var netErr error
	var details []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		netErr = w.c.dialProbe(ctx, w.spec)
	}()
	if w.workerDue() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if alive, err := w.c.workerAlive(ctx, w.spec); err == nil || w.workerSeenAt.IsZero() {
				w.workerAlive = alive
			}
			w.workerSeenAt = time.Now()
		}()
	}
	if failing {
		details = w.readEvidence(ctx, w.c.Probe.PowerConfirmations)
	}
	wg.Wait()
	if netErr != nil {
		details = append(details, netErr.Error())
		if w.misses == 0 {
			w.networkLost()
		}
		w.misses++
	} else {
		w.misses, w.missedSince = 0, time.Time{}
		if w.power == "" || time.Since(w.lastPowerAt) >= w.c.Probe.BMCIdleInterval {
			details = append(details, w.readEvidence(ctx, 1)...)
		}
	}
	p := types.Probe{Reach: w.reach(), Power: w.power, WorkerAlive: w.workerAlive, Heartbeat: w.verdict(), Watchdog: w.beat.Watchdog,
		BeatCounter: w.beat.Counter, BeatAge: w.beatAge(), Detail: strings.Join(details, "; "), At: time.Now()}
	if w.misses > 0 {
		p.Unreachable = p.At.Sub(w.missedSince)
	}
	return p
}

// reach judges the network from the consecutive misses and the power the BMC confirmed.
func (w *hostWatch) reach() types.Reachability {
	switch {
	case w.misses >= w.c.Probe.missesBeforeDown(w.power):
		return types.ReachDown
	case w.misses >= w.c.Probe.MissesBeforeSuspect:
		return types.ReachFailing
	}
	return types.ReachUp
}

// readEvidence reads the BMC, up to n times in a row while a power change waits for its confirmation, and, at the
// same time, the storage heartbeat. It returns what failed, for people.
func (w *hostWatch) readEvidence(ctx context.Context, n int) []string {
	var beatErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		beatErr = w.readHeartbeat(ctx)
	}()
	var details []string
	for i := 0; i < n; i++ {
		if err := w.readPower(ctx); err != nil {
			details = append(details, err.Error())
			break
		}
		if w.candidate == "" {
			break
		}
	}
	wg.Wait()
	if beatErr != nil {
		details = append(details, beatErr.Error())
	}
	return details
}

// workerDue says when to ask again whether the host's worker polls. A live worker is asked about three times per
// grace: it only separates healthy from suspect, and each look-up costs the server a call. A worker not seen is
// asked every second, so a host that comes back is healthy within a few probes of its worker polling again.
func (w *hostWatch) workerDue() bool {
	if w.workerSeenAt.IsZero() {
		return true
	}
	every := w.c.Probe.WorkerGrace / 3
	if !w.workerAlive {
		every = min(every, time.Second)
	}
	return time.Since(w.workerSeenAt) > every
}

// networkLost is the first missed probe after the network answered. Power evidence for "dead" must be fresh: an
// "off" read while the host still answered (a stale or wrong reading) must be confirmed again by readings taken
// from now on. An "on" stays: it can only hold a recovery back.
func (w *hostWatch) networkLost() {
	w.missedSince = time.Now()
	if w.power != types.PowerOn {
		w.power = ""
	}
	w.candidate, w.candidateN = "", 0
}

// readPower takes a BMC reading. "On" counts at once: any sign of life vetoes "dead". Any other state counts
// only after PowerConfirmations equal readings in a row, including the first of a watch.
func (w *hostWatch) readPower(ctx context.Context) error {
	state, err := w.c.powerStatus(ctx, w.spec)
	w.lastPowerAt = time.Now()
	switch {
	case state == types.PowerOn:
		w.power, w.candidate, w.candidateN = state, "", 0
	case state == w.power:
		w.candidate, w.candidateN = "", 0
	case state == w.candidate:
		w.candidateN++
	default:
		w.candidate, w.candidateN = state, 1
	}
	if w.candidate != "" && w.candidateN >= w.c.Probe.PowerConfirmations {
		w.power, w.candidate, w.candidateN = w.candidate, "", 0
	}
	return err
}

// readHeartbeat reads the host's storage heartbeat and notes when its counter changes, by this controller's clock.
// A read that fails is no evidence either way: the verdict is unknown until reads work again, so a share problem
// of the controller's own never makes a host look hung.
func (w *hostWatch) readHeartbeat(ctx context.Context) error {
	if w.c.Heartbeats == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, w.c.Probe.BMCTimeout)
	defer cancel()
	hb, err := w.c.Heartbeats.ReadHeartbeat(ctx, w.spec.Name)
	w.beatReadErr = err != nil
	if err != nil {
		return fmt.Errorf("storage heartbeat of %s: %w", w.spec.Name, err)
	}
	if !w.beatSeen || hb.Counter != w.beat.Counter {
		w.beatSeen, w.beatChanged = true, time.Now()
	}
	w.beat = hb
	return nil
}

// beatAge is how long ago this controller saw the heartbeat's counter change (zero before it saw any).
func (w *hostWatch) beatAge() time.Duration {
	if !w.beatSeen {
		return 0
	}
	return time.Since(w.beatChanged)
}

// verdict judges the heartbeat: stopped once its counter has not changed for HeartbeatStoppedAfter, self-fenced
// once it has not changed for longer than the armed watchdog it announced, plus that margin. While the network
// answers, the heartbeat is read only every BMCIdleInterval, so the threshold grows by that much.
func (w *hostWatch) verdict() types.HeartbeatVerdict {
	stoppedAfter := w.c.Probe.HeartbeatStoppedAfter
	if !w.beatSeen || w.beatReadErr || stoppedAfter <= 0 {
		return types.HeartbeatUnknown
	}
	if w.misses == 0 {
		stoppedAfter += w.c.Probe.BMCIdleInterval
	}
	age := w.beatAge()
	switch {
	case w.beat.Watchdog.Armed && w.beat.Watchdog.Timeout > 0 && age >= w.beat.Watchdog.Timeout+stoppedAfter:
		return types.HeartbeatSelfFenced
	case age >= stoppedAfter:
		return types.HeartbeatStopped
	}
	return types.HeartbeatAlive
}

// dialProbe proves the host reachable with a TCP connect under a deadline: a cut link makes connects hang.
func (c *Controller) dialProbe(ctx context.Context, spec types.HostSpec) error {
	ctx, cancel := context.WithTimeout(ctx, c.Probe.NetworkTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", spec.ProbeAddress())
	if err != nil {
		return fmt.Errorf("network probe %s: %w", spec.ProbeAddress(), err)
	}
	return conn.Close()
}

// workerAlive says whether the host's hypervisor worker polled its task queue within WorkerGrace, from the
// machine that holds the host's inventory address and from that machine only (JudgeHostPollers): a queue polled
// by two machines, or by one that is not the host, is not a live worker. An error is no answer: a busy server
// must not make healthy hosts look suspect, so the caller keeps its last answer.
func (c *Controller) workerAlive(ctx context.Context, spec types.HostSpec) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := c.Client.DescribeTaskQueue(ctx, types.HostTaskQueue(spec.Name), enumspb.TASK_QUEUE_TYPE_ACTIVITY)
	if err != nil {
		withActivityIDs(ctx, c.Logger).Warn("describe task queue", "host", spec.Name, "error", err)
		return false, err
	}
	alive, conflict := JudgeHostPollers(spec, RecentPollers(resp.GetPollers(), time.Now(), c.Probe.WorkerGrace))
	if conflict != "" {
		withActivityIDs(ctx, c.Logger).Error("host worker identity conflict: the host counts as suspect until it is resolved", "host", spec.Name,
			"address", spec.Address, "problem", conflict)
	}
	return alive, nil
}

// powerStatus reads chassis power with the worker-side password.
func (c *Controller) powerStatus(ctx context.Context, spec types.HostSpec) (types.PowerState, error) {
	password, err := BMCPassword(spec.Name, spec.BMC)
	if err != nil {
		return types.PowerAuthFailed, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.Probe.BMCTimeout)
	defer cancel()
	return c.Power.PowerStatus(ctx, spec.BMC, password)
}

// PowerStatus is the BMC's confirmed answer, for decisions taken on one look (manual failover, a fenced signal):
// readings are taken until PowerConfirmations of them agree in a row; an "on" answers at once.
func (c *Controller) PowerStatus(ctx context.Context, spec types.HostSpec) (types.PowerState, error) {
	w := &hostWatch{c: c, spec: spec}
	err := PollUntil(ctx, c.Probe.Interval, func() bool {
		if err := w.readPower(ctx); err != nil {
			// An unreachable BMC is an answer the workflow decides on, not a failure to retry forever.
			withActivityIDs(ctx, c.Logger).Warn("power status", "host", spec.Name, "state", w.candidate, "error", err)
		}
		return w.power != ""
	})
	if err != nil {
		return types.PowerUnreachable, fmt.Errorf("power status of %s: %w", spec.Name, err)
	}
	return w.power, nil
}

// PowerOff fences a host: a hard chassis power-off.
func (c *Controller) PowerOff(ctx context.Context, spec types.HostSpec) error {
	password, err := BMCPassword(spec.Name, spec.BMC)
	if err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), types.ErrTypeBMCSecret, err)
	}
	if err := c.Power.PowerOff(ctx, spec.BMC, password); err != nil {
		return fmt.Errorf("fence %s: %w", spec.Name, err)
	}
	return nil
}

// WaitPowerOff polls the BMC until it reports the chassis off twice in a row: fencing is done only when the
// BMC says so, never when the power-off command merely returned.
func (c *Controller) WaitPowerOff(ctx context.Context, spec types.HostSpec) error {
	offs := 0
	var state types.PowerState
	err := PollUntil(ctx, c.Probe.Interval, func() bool {
		var err error
		state, err = c.powerStatus(ctx, spec)
		activity.RecordHeartbeat(ctx, string(state))
		if err == nil && state == types.PowerOff {
			offs++
		} else {
			offs = 0
		}
		return offs >= 2
	})
	if err != nil {
		return fmt.Errorf("wait for %s power off (last %s): %w", spec.Name, state, err)
	}
	return nil
}

// Notify tells users about an event.
func (c *Controller) Notify(ctx context.Context, e types.Event) error {
	return c.Notifier.Notify(ctx, e)
}

// LoadPolicy returns the configured recovery and placement policy.
func (c *Controller) LoadPolicy(context.Context) (types.Policy, error) {
	return c.Policy, nil
}

// Place asks the scheduler workflow for a target, starting it if it does not run yet. The reservation ID is
// the update ID, so a retried activity gets the first answer back instead of a second reservation.
func (c *Controller) Place(ctx context.Context, req types.PlacementRequest) (types.Placement, error) {
	start := c.Client.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
		StaticSummary:            "Place every VM vmha starts, one at a time, with the reservations still counted",
		ID:                       types.SchedulerWorkflowID,
		TaskQueue:                types.ControllerTaskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
	}, types.SchedulerWorkflow, SchedulerInput{})
	handle, err := c.Client.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions: client.UpdateWorkflowOptions{
			UpdateID:     req.ReservationID,
			UpdateName:   UpdatePlace,
			Args:         []interface{}{req},
			WaitForStage: client.WorkflowUpdateStageCompleted,
		},
	})
	if err != nil {
		return types.Placement{}, fmt.Errorf("place %s: %w", req.VM.Name, err)
	}
	var p types.Placement
	if err := handle.Get(ctx, &p); err != nil {
		return types.Placement{}, fmt.Errorf("place %s: %w", req.VM.Name, err)
	}
	return p, nil
}

// Release ends a reservation.
func (c *Controller) Release(ctx context.Context, req ReleaseRequest) error {
	handle, err := c.Client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID:   types.SchedulerWorkflowID,
		UpdateID:     "release-" + req.ReservationID,
		UpdateName:   UpdateRelease,
		Args:         []interface{}{req},
		WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	if err != nil {
		return fmt.Errorf("release reservation %s: %w", req.ReservationID, err)
	}
	return handle.Get(ctx, nil)
}

// RunningMonitors is the visibility query of every watched host.
const RunningMonitors = "WorkflowType = '" + types.HostMonitorWorkflow + "' AND ExecutionStatus = 'Running'"

// ListHosts lists every monitored host with its spec and current state, from visibility.
func (c *Controller) ListHosts(ctx context.Context) ([]types.Candidate, error) {
	var hosts []types.Candidate
	var token []byte
	for {
		resp, err := c.Client.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Query: RunningMonitors, NextPageToken: token, PageSize: 1000})
		if err != nil {
			return nil, fmt.Errorf("list host monitors: %w", err)
		}
		for _, e := range resp.GetExecutions() {
			h, err := MonitoredHost(e)
			if err != nil {
				return nil, err
			}
			hosts = append(hosts, h.Candidate)
		}
		token = resp.GetNextPageToken()
		if len(token) == 0 {
			c.statsFromHeartbeats(ctx, hosts)
			return hosts, nil
		}
	}
}

// PlacementHostsRequest asks for the hosts as placement needs them. Reserved names the VMs the scheduler holds
// reservations for: the only running domains whose UUIDs come back.
type PlacementHostsRequest struct {
	Reserved []string `json:"reserved,omitempty"`
}

// PlacementHosts lists every monitored host as the scheduler places with it: name, state, labels, capacity and,
// for a healthy host, the fresh stats its storage heartbeat carried. Everything else stays here: addresses and
// BMCs, and the running domains the scheduler holds no reservation for (a host of 40 VMs would add 1.5 KB of
// UUIDs that no placement reads), so the scheduler's history grows by a few hundred bytes per host and refresh.
func (c *Controller) PlacementHosts(ctx context.Context, req PlacementHostsRequest) ([]types.PlacementHost, error) {
	hosts, err := c.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	return placementHosts(hosts, req.Reserved), nil
}

// placementHosts keeps of each host what placement reads, and of its running domains those in reservedUUIDs.
func placementHosts(hosts []types.Candidate, reservedUUIDs []string) []types.PlacementHost {
	reserved := make(map[string]bool, len(reservedUUIDs))
	for _, u := range reservedUUIDs {
		reserved[u] = true
	}
	out := make([]types.PlacementHost, len(hosts))
	for i, h := range hosts {
		st := h.Stats
		st.Host = ""
		st.Running = nil
		for _, u := range h.Stats.Running {
			if reserved[u] {
				st.Running = append(st.Running, u)
			}
		}
		out[i] = types.PlacementHost{Name: h.Spec.Name, State: h.State, Labels: h.Spec.Labels, Capacity: h.Spec.Capacity, Stats: st}
	}
	return out
}

// statsMaxAge is how old, by the controller's clock, the stats a host's heartbeat carries may be for placement to
// use them. Host clocks differ: a skew only makes them look older or younger by that much, and stats that look
// too old, or from the future, are simply not used.
const statsMaxAge = 10 * time.Second

// statsFromHeartbeats fills each healthy host's stats from its storage heartbeat where they are fresh, reading the
// heartbeats a few at a time, so that a recovery asks only the other hosts for theirs (HostStats): one round trip
// less on the way to a VM's restart. A heartbeat that cannot be read leaves that host to be asked.
func (c *Controller) statsFromHeartbeats(ctx context.Context, hosts []types.Candidate) {
	if c.Heartbeats == nil {
		return
	}
	// A hung share costs a look at most this long; a large fleet gets a millisecond more per host, as 16 readers
	// of a thousand heartbeats need more than the one second a few hosts do.
	ctx, cancel := context.WithTimeout(ctx, c.Probe.BMCTimeout+time.Duration(len(hosts))*time.Millisecond)
	defer cancel()
	now := time.Now()
	var wg sync.WaitGroup
	slots := make(chan struct{}, 16)
	for i := range hosts {
		if hosts[i].State != types.HostHealthy {
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func(h *types.Candidate) {
			defer func() { <-slots; wg.Done() }()
			hb, err := c.Heartbeats.ReadHeartbeat(ctx, h.Spec.Name)
			if err != nil || hb.Stats == nil || hb.Stats.Host != h.Spec.Name {
				return
			}
			if age := now.Sub(hb.Stats.SampledAt); age >= -statsMaxAge && age <= statsMaxAge {
				h.Stats = *hb.Stats
			}
		}(&hosts[i])
	}
	wg.Wait()
}

// DescribeHost reads one monitor's spec and state; an unknown host is a non-retryable error.
func (c *Controller) DescribeHost(ctx context.Context, host string) (types.Candidate, error) {
	resp, err := c.Client.DescribeWorkflowExecution(ctx, types.HostMonitorID(host), "")
	if err != nil {
		return types.Candidate{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf("host %q: no monitor (is it in the inventory?): %v", host, err), types.ErrTypeUnknownHost, err)
	}
	info := resp.GetWorkflowExecutionInfo()
	if info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
		return types.Candidate{}, temporal.NewNonRetryableApplicationError(fmt.Sprintf("host %q: monitor is %s", host, info.GetStatus()), types.ErrTypeUnknownHost, nil)
	}
	h, err := MonitoredHost(info)
	return h.Candidate, err
}

// Monitored is a host as its monitor shows it in visibility: the spec from its memo, the state and the time it
// was entered from its search attributes.
type Monitored struct {
	types.Candidate
	Since time.Time
}

// MonitoredHost reads a HostMonitor execution's memo and search attributes, as the Web UI shows them.
func MonitoredHost(info *workflowpb.WorkflowExecutionInfo) (Monitored, error) {
	dc := converter.GetDefaultDataConverter()
	var h Monitored
	if p, ok := info.GetMemo().GetFields()[MemoSpec]; ok {
		if err := dc.FromPayload(p, &h.Spec); err != nil {
			return h, fmt.Errorf("decode spec of %s: %w", info.GetExecution().GetWorkflowId(), err)
		}
	}
	fields := info.GetSearchAttributes().GetIndexedFields()
	var state string
	if p, ok := fields[types.HostStateAttr.GetName()]; ok {
		_ = dc.FromPayload(p, &state)
	}
	h.State = types.HostState(state)
	if p, ok := fields[types.HostStateSinceAttr.GetName()]; ok {
		_ = dc.FromPayload(p, &h.Since)
	}
	return h, nil
}

// CheckSecrets makes sure this worker can read every BMC password the inventory names, before anything changes.
func (c *Controller) CheckSecrets(_ context.Context, hosts []types.HostSpec) error {
	var errs []error
	for _, h := range hosts {
		if _, err := BMCPassword(h.Name, h.BMC); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return temporal.NewNonRetryableApplicationError(err.Error(), types.ErrTypeBMCSecret, nil)
	}
	return nil
}

// UpsertMonitor starts a host's monitor, or hands the running one its new spec.
func (c *Controller) UpsertMonitor(ctx context.Context, spec types.HostSpec) error {
	opts := client.StartWorkflowOptions{
		StaticSummary:         fmt.Sprintf("Watch %s (%s, BMC %s) and recover its HA VMs when it dies", spec.Name, spec.Address, spec.BMC.Address),
		ID:                    types.HostMonitorID(spec.Name),
		TaskQueue:             types.ControllerTaskQueue,
		Memo:                  map[string]interface{}{MemoSpec: spec},
		TypedSearchAttributes: temporal.NewSearchAttributes(types.HostAttr.ValueSet(spec.Name)),
	}
	_, err := c.Client.SignalWithStartWorkflow(ctx, opts.ID, SignalSpec, spec, opts, types.HostMonitorWorkflow, MonitorInput{Spec: spec})
	if err != nil {
		return fmt.Errorf("upsert monitor of %s: %w", spec.Name, err)
	}
	return nil
}

// RetireMonitor stops the monitor of a host removed from the inventory.
func (c *Controller) RetireMonitor(ctx context.Context, host string) error {
	err := c.Client.SignalWorkflow(ctx, types.HostMonitorID(host), "", SignalRetire, "removed from inventory")
	var notFound *serviceerror.NotFound
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("retire monitor of %s: %w", host, err)
	}
	return nil
}
