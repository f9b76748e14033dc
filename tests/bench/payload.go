package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"google.golang.org/protobuf/proto"

	"vmha/activities"
	"vmha/activities/heartbeat"
	"vmha/types"
)

// payloadConfig is a recovery among many healthy hosts: how large do its inputs, results, updates and histories get?
type payloadConfig struct {
	// Candidates stand-in hosts, each running CandidateVMs VMs, besides the two real targets.
	Candidates   int
	CandidateVMs int
	VMs          int
	Concurrency  int
	Reps         int
	// Timeout bounds each recovery: a payload over Temporal's limit may fail it only after every retry.
	Timeout time.Duration
}

// payloadRow is one recovery's size measurements.
type payloadRow struct {
	Candidates, CandidateVMs, VMs int
	Took                          time.Duration
	Err                           string
	HostRecovery, RecoverVM       historyUse
	// Scheduler is the scheduler's history as the recovery left it; SchedulerGrowth what the recovery added.
	Scheduler       historyUse
	SchedulerGrowth int64
}

// historyUse is a workflow's history: its size (the events' encoded sizes summed) and its largest event, which
// holds the largest input, result or update of the workflow. For RecoverVM, the largest over the round's VMs.
type historyUse struct {
	Found       int
	Bytes       int64
	Events      int
	Largest     int
	LargestType string
	// Terminated is the server's reason when it terminated the workflow (a payload or size limit, say).
	Terminated string
}

func (h *historyUse) max(o historyUse) {
	h.Found += o.Found
	h.Bytes, h.Events = max(h.Bytes, o.Bytes), max(h.Events, o.Events)
	if o.Largest > h.Largest {
		h.Largest, h.LargestType = o.Largest, o.LargestType
	}
}

// standInStats is what a stand-in host's heartbeat carries: its VMs (2 vCPUs each) fill its memory but 200 MiB,
// 60% busy. Placement weighs each stand-in through every rule down to the memory check, and only the two real
// targets take VMs: a stand-in has no worker to define one.
func standInStats(host string, running []string) func() *types.HostStats {
	return func() *types.HostStats {
		const free = 200
		return &types.HostStats{Host: host, CPULoad: 0.6, CPUs: nodeCPUs, MemoryTotalMiB: nodeMemoryMiB,
			MemoryFreeMiB: free, VCPUsAllocated: 2 * len(running), MemoryAllocatedMiB: nodeMemoryMiB - free,
			AntiAffinityGroups: []string{"web", "db"}, Running: running, SharedStorageOK: true, SampledAt: time.Now().UTC()}
	}
}

// runPayload starts the server, the two real targets (libvirt test driver, real monitors), cfg.Candidates
// stand-in hosts (a stand-in monitor, healthy, and a storage heartbeat carrying the stats of cfg.CandidateVMs
// running VMs), waits until every host is healthy, then recovers a host of cfg.VMs VMs and measures the histories.
func runPayload(ctx context.Context, cfg payloadConfig, logger *slog.Logger) (rows []payloadRow, err error) {
	srv, err := startServer(ctx, logger)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, srv.stop()) }()
	share, cat, err := prepareShare(ctx, srv)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	hosts, stopHosts, err := startSimHosts(ctx, srv, share, targetHosts)
	if err != nil {
		return nil, err
	}
	defer stopHosts()
	// The controller reads the stand-ins' heartbeats (renewed every 2 s, like their stats) from the bench's share.
	w, ctrl, err := startBenchController(srv.client, share)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	ctrl.Policy.RecoveryConcurrency = cfg.Concurrency

	target, err := listenProbeTarget()
	if err != nil {
		return nil, err
	}
	defer target.close()
	var background sync.WaitGroup
	defer background.Wait()
	defer cancel()
	standIns := worker.New(srv.client, standInQueue, worker.Options{})
	standIns.RegisterWorkflowWithOptions(standInMonitor, workflow.RegisterOptions{Name: types.HostMonitorWorkflow})
	if err := standIns.Start(); err != nil {
		return nil, fmt.Errorf("start the stand-ins' worker: %w", err)
	}
	defer standIns.Stop()
	began := time.Now()
	for _, name := range targetHosts {
		if err := upsertPatiently(ctx, ctrl.UpsertMonitor, hostSpec(name, target.port())); err != nil {
			return nil, err
		}
	}
	err = parallel(ctx, cfg.Candidates, 16, func(i int) error {
		spec := hostSpec(fmt.Sprintf("cand%05d", i+1), target.port())
		running := make([]string, cfg.CandidateVMs)
		for j := range running {
			running[j] = fmt.Sprintf("%08d-0000-4000-8000-%012d", i+1, j+1)
		}
		beat := &heartbeat.Writer{Root: share, Host: spec.Name, Interval: 4 * time.Second, Timeout: 5 * time.Second,
			Stats: standInStats(spec.Name, running), Logger: quiet()}
		if _, err := beat.Renew(ctx); err != nil {
			return err
		}
		background.Add(1)
		go func() { defer background.Done(); beat.Run(ctx) }()
		return startStandIn(ctx, srv.client, spec)
	})
	if err != nil {
		return nil, err
	}
	total := int64(cfg.Candidates + len(targetHosts))
	settled, healthy, err := waitHealthyPatiently(ctx, srv.client, total, began, 5*time.Minute, logger)
	if err != nil || healthy != total {
		return nil, errors.Join(err, fmt.Errorf("%d of %d hosts healthy after 5 minutes", healthy, total))
	}
	logger.Info("all hosts healthy", "hosts", total, "after", settled.Round(time.Second))

	for rep := range cfg.Reps {
		incident := rep + 1
		row := payloadRow{Candidates: cfg.Candidates, CandidateVMs: cfg.CandidateVMs, VMs: cfg.VMs}
		schedBefore, err := measureHistory(ctx, srv.client, types.SchedulerWorkflowID)
		if err != nil {
			return rows, err
		}
		rctx, rcancel := context.WithTimeout(ctx, cfg.Timeout)
		took, _, ids, rerr := recoverOnce(rctx, srv.client, cat, hosts, cfg.VMs, incident, share)
		rcancel()
		row.Took = took
		if rerr != nil {
			row.Err = rerr.Error()
			logger.Warn("recovery failed", "candidates", cfg.Candidates, "error", rerr)
		}
		round := fmt.Sprint("bench-", incident)
		if row.HostRecovery, err = measureHistory(ctx, srv.client, types.HostRecoveryID(failedHost, round, 1)); err != nil {
			return rows, err
		}
		for _, id := range ids {
			h, err := measureHistory(ctx, srv.client, types.RecoverVMID(failedHost, round, 1, id))
			if err != nil {
				return rows, err
			}
			row.RecoverVM.max(h)
		}
		if row.Scheduler, err = measureHistory(ctx, srv.client, types.SchedulerWorkflowID); err != nil {
			return rows, err
		}
		row.SchedulerGrowth = row.Scheduler.Bytes - schedBefore.Bytes
		logger.Info("payloads", "candidates", cfg.Candidates, "took", took.Round(time.Millisecond),
			"hostrecovery_bytes", row.HostRecovery.Bytes, "largest_event", row.HostRecovery.Largest, "error", row.Err)
		rows = append(rows, row)
	}
	return rows, nil
}

// standInQueue serves the stand-in hosts' monitors, apart from the controller's queue.
const standInQueue = "bench-stand-ins"

// standInMonitor is a stand-in host's monitor as placement sees it (visibility: running, VmhaHostState healthy,
// the spec in its memo), and nothing more: no watch, no probes, no worker on the host's queue. What a recovery
// carries does not depend on how its candidates came to be healthy, and a thousand real watches would measure the
// server's steady state (the steady-state table) rather than the recovery's payloads.
func standInMonitor(ctx workflow.Context, _ types.HostSpec) error {
	workflow.GetSignalChannel(ctx, "never").Receive(ctx, nil)
	return nil
}

// startStandIn starts a stand-in host's monitor, healthy from the start, patiently like upsertPatiently.
func startStandIn(ctx context.Context, c client.Client, spec types.HostSpec) error {
	opts := client.StartWorkflowOptions{
		ID: types.HostMonitorID(spec.Name), TaskQueue: standInQueue, Memo: map[string]interface{}{activities.MemoSpec: spec},
		TypedSearchAttributes: temporal.NewSearchAttributes(types.HostAttr.ValueSet(spec.Name),
			types.HostStateAttr.ValueSet(string(types.HostHealthy)), types.HostStateSinceAttr.ValueSet(time.Now().UTC())),
	}
	return upsertPatiently(ctx, func(ctx context.Context, spec types.HostSpec) error {
		_, err := c.ExecuteWorkflow(ctx, opts, types.HostMonitorWorkflow, spec)
		return err
	}, spec)
}

// upsertPatiently starts a host's monitor, trying again for a minute: on a machine shared with other work the
// embedded server may time out while a thousand monitors start.
func upsertPatiently(ctx context.Context, upsert func(context.Context, types.HostSpec) error, spec types.HostSpec) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := upsert(ctx, spec)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(time.Second)
	}
}

// waitHealthyPatiently is waitHealthy for a busy machine: a count the server times out is counted again.
func waitHealthyPatiently(ctx context.Context, c client.Client, n int64, began time.Time, settle time.Duration, logger *slog.Logger) (time.Duration, int64, error) {
	for {
		took, healthy, err := waitHealthy(ctx, c, n, began, settle, logger)
		if err == nil || ctx.Err() != nil || time.Since(began) > settle {
			return took, healthy, err
		}
		logger.Warn("count healthy monitors", "error", err)
	}
}

// measureHistory reads a workflow's current run; a workflow that never started measures zero.
func measureHistory(ctx context.Context, c client.Client, id string) (historyUse, error) {
	var h historyUse
	it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		var notFound *serviceerror.NotFound
		if errors.As(err, &notFound) {
			return historyUse{}, nil
		}
		if err != nil {
			return h, fmt.Errorf("history of %s: %w", id, err)
		}
		if t := e.GetWorkflowExecutionTerminatedEventAttributes(); t != nil {
			h.Terminated = t.GetReason()
		}
		size := proto.Size(e)
		h.Bytes += int64(size)
		h.Events++
		if size > h.Largest {
			h.Largest, h.LargestType = size, strings.TrimPrefix(e.GetEventType().String(), "EVENT_TYPE_")
		}
	}
	h.Found = 1
	return h, nil
}

func printPayload(w io.Writer, rows []payloadRow) {
	fmt.Fprintln(w, "### Payloads and histories of a host recovery among many healthy hosts (libvirt test driver for the 2 targets, stand-ins for the others)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| healthy hosts (VMs each) | VMs recovered | took | outcome | HostRecovery history (events) | its largest event | RecoverVM history, largest of the round | its largest event | Scheduler history added | Scheduler's largest event |")
	fmt.Fprintln(w, "|---:|---:|---:|---|---:|---|---:|---|---:|---|")
	for _, r := range rows {
		outcome := "all running"
		if r.Err != "" {
			outcome = "failed: " + shorten(r.Err, 160)
		}
		if t := r.HostRecovery.Terminated; t != "" {
			outcome = "HostRecovery terminated by the server: " + shorten(t, 200)
		}
		fmt.Fprintf(w, "| %d + 2 (%d) | %d | %s | %s | %s (%d) | %s %s | %s (%d) | %s %s | %s | %s %s |\n",
			r.Candidates, r.CandidateVMs, r.VMs, round(r.Took), outcome,
			kb(r.HostRecovery.Bytes), r.HostRecovery.Events, kb(int64(r.HostRecovery.Largest)), r.HostRecovery.LargestType,
			kb(r.RecoverVM.Bytes), r.RecoverVM.Events, kb(int64(r.RecoverVM.Largest)), r.RecoverVM.LargestType,
			kb(r.SchedulerGrowth), kb(int64(r.Scheduler.Largest)), r.Scheduler.LargestType)
	}
	fmt.Fprintln(w)
}

func kb(b int64) string {
	if b >= 1<<20 {
		return fmt.Sprintf("%.2f MB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%.1f KB", float64(b)/1024)
}

func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
