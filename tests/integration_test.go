package tests

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/interceptor"

	"vmha/activities"
	"vmha/types"
)

// TestIntegrationDeadHostRecovery: a VM made by CreateVM and one defined with libvirt by hand both live on one host;
// the host loses power; its monitor declares it dead and its VMs run again, once each, on the other hosts. Then an
// operator fails over one of those hosts with fencing, and vmha powers it off before moving its VMs again.
func TestIntegrationDeadHostRecovery(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()

	web, err := c.starter().CreateVM(ctx, types.CreateVMRequest{Name: "web1", Image: c.image, VCPUs: 1, MemoryMiB: 128,
		Policy: types.HAPolicy{Enabled: true, Priority: 5}})
	if err != nil {
		t.Fatalf("create web1: %v", err)
	}
	victim := c.hosts[web.Owner]
	if victim == nil || web.Generation != 1 {
		t.Fatalf("created %+v: want generation 1 owned by one of %v", web, c.names)
	}
	c.assertRunsOnlyOn(web.UUID, victim.name)

	// An operator's `virsh define` of an HA VM reaches the catalog through that host's keeper.
	dbUUID := uuid.NewString()
	c.defineHA(victim, "db1", dbUUID, 64, 9)
	c.waitCatalog(dbUUID, victim.name, 1)

	victim.die(t)
	c.waitState(victim.name, types.HostRecovered, 30*time.Second)

	var res types.RecoveryResult
	c.result(c.recoveryID(victim.name), 30*time.Second, &res)
	if len(res.Outcomes) != 2 || res.Outcomes[0].VM != "db1" || res.Outcomes[1].VM != "web1" {
		t.Fatalf("recovery outcomes %+v: want db1 (priority 9) then web1", res.Outcomes)
	}
	c.assertRecoveries(victim.name, web.UUID, dbUUID)
	targets := map[string]string{}
	for _, o := range res.Outcomes {
		if !o.Recovered || o.Target == victim.name || c.hosts[o.Target] == nil {
			t.Fatalf("outcome %+v: want recovered on another host", o)
		}
		c.assertRunsOnlyOn(o.UUID, o.Target, victim.name)
		c.waitCatalog(o.UUID, o.Target, 2)
		targets[o.VM] = o.Target
	}

	// The host comes back: its worker drops the stale definitions, since the catalog gives the VMs to others.
	victim.revive(c)
	c.waitState(victim.name, types.HostHealthy, 30*time.Second)
	eventually(t, 10*time.Second, func() bool {
		doms, err := victim.hv.Domains(ctx)
		return err == nil && len(doms) == 0
	}, func() string { return fmt.Sprintf("stale definitions left on %s after it came back", victim.name) })
	for _, o := range res.Outcomes {
		c.assertRunsOnlyOn(o.UUID, o.Target)
	}

	c.waitEvents(func(e types.Event) bool {
		return e.Kind == types.EventHostState && e.Host == victim.name && e.To == types.HostRecovered
	})
	dead := c.webhook.received(func(e types.Event) bool {
		return e.Kind == types.EventHostState && e.Host == victim.name && e.To == types.HostDead
	})
	if len(dead) != 1 || dead[0].Seconds <= 0 {
		t.Fatalf("host.state dead events %+v: want one with the detection time", dead)
	}
	for vm, target := range targets {
		done := c.webhook.received(func(e types.Event) bool { return e.Kind == types.EventRecoveryDone && e.VM == vm })
		if len(done) != 1 || done[0].Target != target || done[0].Host != victim.name {
			t.Fatalf("vm.recovery.done events of %s: %+v, want one naming target %s", vm, done, target)
		}
	}
	if n := len(c.webhook.received(func(e types.Event) bool { return e.Kind == types.EventHostRecoveryDone })); n != 1 {
		t.Fatalf("%d host.recovery.done events, want 1", n)
	}
	if n := c.webhook.forgeries(); n != 0 {
		t.Fatalf("%d webhook posts with a bad signature", n)
	}

	// Manual failover with fencing of the host that now runs web1: vmha powers it off through its BMC (the fake
	// host dies with its chassis power), then its monitor recovers its VMs onto the other hosts.
	fenced := c.hosts[targets["web1"]]
	fenced.diesWithPower(t)
	fo, err := c.starter().Failover(ctx, types.FailoverRequest{Host: fenced.name, Fence: true, Reason: "integration test"})
	if err != nil {
		t.Fatalf("failover %s: %v", fenced.name, err)
	}
	if !fo.Fenced || fo.PowerBefore != types.PowerOn || fenced.bmc.Power() {
		t.Fatalf("failover %+v, BMC power on=%t: want fenced from on to off", fo, fenced.bmc.Power())
	}
	c.waitState(fenced.name, types.HostRecovered, 30*time.Second)
	var fres types.RecoveryResult
	c.result(c.recoveryID(fenced.name), 30*time.Second, &fres)
	var moved []string
	for _, o := range fres.Outcomes {
		if !o.Recovered || o.Target == fenced.name || c.hosts[o.Target] == nil {
			t.Fatalf("failover outcome %+v: want recovered on another host", o)
		}
		c.assertRunsOnlyOn(o.UUID, o.Target, fenced.name)
		c.waitCatalog(o.UUID, o.Target, 3)
		moved = append(moved, o.UUID)
	}
	if !slices.Contains(moved, web.UUID) {
		t.Fatalf("failover of %s moved %v, want web1 (%s) among them", fenced.name, moved, web.UUID)
	}
	c.assertRecoveries(fenced.name, moved...)

	c.recordHistories(map[string]string{
		types.HostMonitorWorkflow:    types.HostMonitorID(victim.name),
		types.HostRecoveryWorkflow:   c.recoveryID(victim.name),
		types.RecoverVMWorkflow:      types.RecoverVMID(victim.name, c.incident(victim.name), 1, dbUUID),
		types.CreateVMWorkflow:       types.CreateVMID("web1"),
		types.ApplyInventoryWorkflow: types.ApplyInventoryID,
		types.SchedulerWorkflow:      types.SchedulerWorkflowID,
		types.ManualFailoverWorkflow: types.ManualFailoverID(fenced.name),
		"HostMonitor-fenced":         types.HostMonitorID(fenced.name),
	})
}

// TestIntegrationIsolatedHostIsNotRecovered: a host that stops answering while its BMC reports power on may still
// run its VMs, so it is reported isolated and nothing is recovered; it is healthy again when its network returns.
func TestIntegrationIsolatedHostIsNotRecovered(t *testing.T) {
	c := newCluster(t)
	h := c.hosts["hv1"]
	id := uuid.NewString()
	c.defineHA(h, "iso1", id, 64, 0)
	c.waitCatalog(id, h.name, 1)

	h.networkDown()
	c.waitState(h.name, types.HostIsolated, 20*time.Second)
	// Watch for a while: the state must hold and no recovery may start.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ids := c.workflows(fmt.Sprintf("WorkflowType IN ('%s', '%s')", types.HostRecoveryWorkflow, types.RecoverVMWorkflow)); len(ids) != 0 {
			t.Fatalf("isolated host: recoveries started: %v", ids)
		}
		if s := c.state(h.name); s != types.HostIsolated {
			t.Fatalf("isolated host went %s", s)
		}
		time.Sleep(500 * time.Millisecond)
	}
	c.assertRunsOnlyOn(id, h.name)
	c.waitCatalog(id, h.name, 1)

	h.networkUp(t)
	c.waitState(h.name, types.HostHealthy, 20*time.Second)
	c.waitEvents(func(e types.Event) bool {
		return e.Kind == types.EventHostState && e.Host == h.name && e.To == types.HostIsolated
	})
	if bad := c.webhook.received(func(e types.Event) bool {
		return e.Host == h.name && (e.To == types.HostDead || e.Kind == types.EventRecoveryStarted)
	}); len(bad) != 0 {
		t.Fatalf("isolated host: events %+v", bad)
	}
	// One cut, one alert: the watches that follow "isolated" remember the misses and do not flap to suspect.
	if n := len(c.webhook.received(func(e types.Event) bool {
		return e.Kind == types.EventHostState && e.Host == h.name && e.To == types.HostIsolated
	})); n != 1 {
		t.Fatalf("%d host.state isolated alerts for one network cut, want 1", n)
	}
}

// TestIntegrationAtMostOnceUnderCrashes: while a dead host's VM is being recovered, the target's worker dies right
// after defining the VM (before starting it) and the controller restarts. The VM still ends up running exactly
// once, recovered by exactly one RecoverVM.
func TestIntegrationAtMostOnceUnderCrashes(t *testing.T) {
	crash := &crashAfterDefine{fired: make(chan string, 1)}
	c := newCluster(t, crash)
	h := c.hosts["hv1"]
	id := uuid.NewString()
	c.defineHA(h, "app1", id, 64, 0)
	c.waitCatalog(id, h.name, 1)

	crash.armed.Store(true)
	h.die(t)
	var target string
	select {
	case target = <-crash.fired:
	case <-time.After(30 * time.Second):
		t.Fatal("no target defined the VM within 30s")
	}
	if st, err := c.hosts[target].hv.State(context.Background(), id); err != nil || st != types.DomainShutoff {
		t.Fatalf("at the crash, %s has the VM %s (%v): want defined, not started", target, st, err)
	}
	c.hosts[target].stopWorker()
	c.controllerDown()
	c.startController()
	c.hosts[target].startWorker(c, crash)

	c.waitState(h.name, types.HostRecovered, 60*time.Second)
	var res types.RecoveryResult
	c.result(c.recoveryID(h.name), 30*time.Second, &res)
	if len(res.Outcomes) != 1 || !res.Outcomes[0].Recovered {
		t.Fatalf("outcomes %+v: want app1 recovered", res.Outcomes)
	}
	o := res.Outcomes[0]
	c.assertRecoveries(h.name, id)
	c.assertRunsOnlyOn(id, o.Target, h.name)
	c.waitCatalog(id, o.Target, 2)
	if o.Target == target {
		// The crash lost the first define's result: it timed out and a retry defined the VM again, idempotently.
		if n := c.activityAttempt(types.RecoverVMID(h.name, c.incident(h.name), 1, id), "DefineFromCatalog"); n < 2 {
			t.Fatalf("the define on %s completed at attempt %d: the crash was not felt", target, n)
		}
	}
	t.Logf("crashed target %s; VM recovered on %s after %d target(s)", target, o.Target, o.Attempts)

	c.recordHistories(map[string]string{"RecoverVM-crash": types.RecoverVMID(h.name, c.incident(h.name), 1, id)})
}

// crashAfterDefine, once armed, lets the first DefineFromCatalog define the VM and then hangs its worker as a
// crash would: the result is never reported while the worker lives, and the test stops that worker.
type crashAfterDefine struct {
	interceptor.WorkerInterceptorBase
	armed atomic.Bool
	fired chan string
}

func (c *crashAfterDefine) InterceptActivity(_ context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &crashActivity{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, root: c}
}

type crashActivity struct {
	interceptor.ActivityInboundInterceptorBase
	root *crashAfterDefine
}

func (a *crashActivity) ExecuteActivity(ctx context.Context, in *interceptor.ExecuteActivityInput) (interface{}, error) {
	res, err := a.Next.ExecuteActivity(ctx, in)
	info := activity.GetInfo(ctx)
	if err != nil || info.ActivityType.Name != "DefineFromCatalog" || !a.root.armed.CompareAndSwap(true, false) {
		return res, err
	}
	a.root.fired <- hostOfQueue(info.TaskQueue)
	select {
	case <-ctx.Done():
	case <-time.After(time.Minute):
	}
	return nil, errors.New("worker crashed after define")
}

func hostOfQueue(q string) string { return q[len(types.HostTaskQueue("")):] }

// activityAttempt is the attempt at which the workflow's last activity of that type started.
func (c *cluster) activityAttempt(workflowID, activityType string) int32 {
	c.t.Helper()
	scheduled := map[int64]bool{}
	var attempt int32
	it := c.client.GetWorkflowHistory(context.Background(), workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		must(c.t, err)
		if a := e.GetActivityTaskScheduledEventAttributes(); a != nil && a.GetActivityType().GetName() == activityType {
			scheduled[e.GetEventId()] = true
		}
		if a := e.GetActivityTaskStartedEventAttributes(); a != nil && scheduled[a.GetScheduledEventId()] {
			attempt = a.GetAttempt()
		}
	}
	return attempt
}

// assertRunsOnlyOn checks every host's libvirt: the VM runs on host and is not even defined anywhere else, but on
// dead hosts, which keep their stale definitions until they come back.
func (c *cluster) assertRunsOnlyOn(uuid, host string, dead ...string) {
	c.t.Helper()
	running, defined := c.runningOn(uuid)
	defined = slices.DeleteFunc(defined, func(h string) bool { return slices.Contains(dead, h) })
	if len(running) != 1 || running[0] != host || len(defined) != 0 {
		c.t.Fatalf("VM %s runs on %v and is defined (not running) on %v: want running on %s only", uuid, running, defined, host)
	}
}

// waitCatalog waits until the catalog gives the VM to owner at generation.
func (c *cluster) waitCatalog(uuid, owner string, generation int64) {
	c.t.Helper()
	var last string
	eventually(c.t, 10*time.Second, func() bool {
		e, err := c.catalogEntry(uuid)
		last = fmt.Sprintf("owner %s generation %d HA %t (error %v)", e.Owner, e.Generation, e.Policy.Enabled, err)
		return err == nil && e.Owner == owner && e.Generation == generation && e.Policy.Enabled
	}, func() string {
		return fmt.Sprintf("catalog of %s: %s, want owner %s generation %d", uuid, last, owner, generation)
	})
}

// incident is the host's current incident, as its monitor reports it.
func (c *cluster) incident(host string) string {
	c.t.Helper()
	v, err := c.client.QueryWorkflow(context.Background(), types.HostMonitorID(host), "", activities.QueryStatus)
	must(c.t, err)
	var st activities.MonitorInput
	must(c.t, v.Get(&st))
	if st.Incident == "" {
		c.t.Fatalf("host %s has no incident", host)
	}
	return st.Incident
}

// recoveryID is the first recovery round of the host's current incident.
func (c *cluster) recoveryID(host string) string {
	return types.HostRecoveryID(host, c.incident(host), 1)
}

// assertRecoveries checks that the host ran one incident with one recovery round, with exactly one RecoverVM per
// VM, each completed, and nothing else.
func (c *cluster) assertRecoveries(host string, vmUUIDs ...string) {
	c.t.Helper()
	var want []string
	for _, id := range vmUUIDs {
		want = append(want, types.RecoverVMID(host, c.incident(host), 1, id))
	}
	sort.Strings(want)
	got := c.workflows(fmt.Sprintf("WorkflowType = '%s' AND %s = '%s'", types.RecoverVMWorkflow, types.HostAttr.GetName(), host))
	sort.Strings(got)
	if !slices.Equal(got, want) {
		c.t.Fatalf("RecoverVM workflows of %s: %v, want %v", host, got, want)
	}
	for _, id := range want {
		d, err := c.client.DescribeWorkflowExecution(context.Background(), id, "")
		must(c.t, err)
		if s := d.GetWorkflowExecutionInfo().GetStatus(); s != enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED {
			c.t.Fatalf("%s is %s", id, s)
		}
	}
	if n := len(c.workflows(fmt.Sprintf("WorkflowType = '%s' AND %s = '%s'", types.HostRecoveryWorkflow, types.HostAttr.GetName(), host))); n != 1 {
		c.t.Fatalf("%d HostRecovery workflows for %s, want 1", n, host)
	}
}

// waitEvents waits until the webhook received an event that matches.
func (c *cluster) waitEvents(match func(types.Event) bool) {
	c.t.Helper()
	eventually(c.t, 20*time.Second, func() bool { return len(c.webhook.received(match)) > 0 },
		func() string {
			return fmt.Sprintf("no such webhook event; got %+v", c.webhook.received(func(types.Event) bool { return true }))
		})
}

// diesWithPower wires the host to its BMC: once the chassis reads off, the host is dead.
func (h *host) diesWithPower(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for h.bmc.Power() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		h.die(t)
	}()
}
