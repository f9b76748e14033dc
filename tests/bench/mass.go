package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/client"

	"vmha/activities/catalog"
	"vmha/types"
	"vmha/workflows"
)

// massConfig is a mass recovery: Dead of Hosts hosts die at once with VMs HA VMs among them.
type massConfig struct {
	Hosts, Dead, VMs, Concurrency, Reps int
	Timeout                             time.Duration
}

// massCapacity is each survivor's vCPU capacity (HostSpec.Capacity) with an overcommit ratio of 1: 20 survivors
// take 1,120 VMs of 1 vCPU, so 1,000 fill them to 89% and placement must count every reservation to fit them all.
const massCapacity = 56

// massRow is one repetition: from starting every HostRecovery to the last one done.
type massRow struct {
	Took      time.Duration
	Recovered int
	// Running counts the VMs running on the survivors when the run ended (or its time ran out).
	Running    int
	Err        string
	MaxPerHost int
	// Overcommitted names survivors running more VMs than their capacity allows.
	Overcommitted []string
}

func runMass(ctx context.Context, cfg massConfig, logger *slog.Logger) (rows []massRow, err error) {
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

	names := make([]string, cfg.Hosts-cfg.Dead)
	for i := range names {
		names[i] = fmt.Sprintf("sv%02d", i+1)
	}
	survivors, stopHosts, err := startSimHosts(ctx, srv, share, names)
	if err != nil {
		return nil, err
	}
	defer stopHosts()
	w, ctrl, err := startBenchController(srv.client, share)
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	ctrl.Policy.RecoveryConcurrency, ctrl.Policy.OvercommitRatio = cfg.Concurrency, 1
	target, err := listenProbeTarget()
	if err != nil {
		return nil, err
	}
	defer target.close()
	for name := range survivors {
		spec := hostSpec(name, target.port())
		spec.Capacity.VCPUs = massCapacity
		if err := upsertPatiently(ctx, ctrl.UpsertMonitor, spec); err != nil {
			return nil, err
		}
	}
	if _, healthy, err := waitHealthyPatiently(ctx, srv.client, int64(len(survivors)), time.Now(), 2*time.Minute, logger); err != nil || healthy != int64(len(survivors)) {
		return nil, errors.Join(err, fmt.Errorf("%d of %d survivors healthy after 2 minutes", healthy, len(survivors)))
	}
	for rep := range cfg.Reps {
		row, err := massOnce(ctx, srv.client, cat, survivors, cfg, rep+1, share)
		if err != nil {
			row.Err = err.Error()
		}
		logger.Info("mass recovery", "rep", rep+1, "took", row.Took.Round(time.Millisecond), "recovered", row.Recovered,
			"max_per_host", row.MaxPerHost, "overcommitted", row.Overcommitted, "error", row.Err)
		rows = append(rows, row)
		if err != nil {
			return rows, err
		}
	}
	return rows, nil
}

// massOnce gives cfg.VMs HA VMs to cfg.Dead hosts that have no worker, starts every host's HostRecovery at once
// (as their monitors do once each death is confirmed), waits for all, checks that every VM runs on a survivor and
// that no survivor runs more than its capacity, then removes the VMs.
func massOnce(ctx context.Context, c client.Client, cat *catalog.Dir, survivors map[string]*simHost, cfg massConfig, rep int, share string) (massRow, error) {
	var row massRow
	for i := range cfg.VMs {
		dead := fmt.Sprintf("dd%02d", i%cfg.Dead+1)
		if _, err := putVM(ctx, cat, share, dead, fmt.Sprintf("m%d-%s-vm%03d", rep, dead, i/cfg.Dead+1), i%3); err != nil {
			return row, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	incident := fmt.Sprint("mass-", rep)
	began := time.Now()
	runs := make([]client.WorkflowRun, cfg.Dead)
	for i := range runs {
		dead := fmt.Sprintf("dd%02d", i+1)
		var err error
		if runs[i], err = c.ExecuteWorkflow(rctx, client.StartWorkflowOptions{
			ID: types.HostRecoveryID(dead, incident, 1), TaskQueue: types.ControllerTaskQueue, WorkflowExecutionErrorWhenAlreadyStarted: true,
		}, types.HostRecoveryWorkflow, workflows.HostRecoveryInput{Host: dead, Incident: incident, Round: 1, Cause: "bench", DeclaredAt: began}); err != nil {
			return row, fmt.Errorf("start recovery of %s: %w", dead, err)
		}
	}
	results := make([]types.RecoveryResult, len(runs))
	errs := make([]error, len(runs))
	var wg sync.WaitGroup
	for i, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = run.Get(rctx, &results[i])
		}()
	}
	wg.Wait()
	row.Took = time.Since(began)

	var problems []string
	var outcomes []types.VMOutcome
	for i, res := range results {
		if errs[i] != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", runs[i].GetID(), errs[i]))
		}
		for _, o := range res.Outcomes {
			if _, ok := survivors[o.Target]; !o.Recovered || !ok {
				problems = append(problems, fmt.Sprintf("%s: not recovered (%s)", o.VM, o.Reason))
				continue
			}
			row.Recovered++
			outcomes = append(outcomes, o)
		}
	}
	for name, h := range survivors {
		doms, err := h.hv.Domains(ctx)
		if err != nil {
			return row, err
		}
		running := 0
		for _, d := range doms {
			if d.State == types.DomainRunning {
				running++
			}
		}
		row.Running += running
		row.MaxPerHost = max(row.MaxPerHost, running)
		if running > massCapacity {
			row.Overcommitted = append(row.Overcommitted, fmt.Sprintf("%s (%d VMs)", name, running))
		}
	}
	slices.Sort(row.Overcommitted)
	if row.Recovered != cfg.VMs {
		problems = append(problems, fmt.Sprintf("%d of %d VMs recovered", row.Recovered, cfg.VMs))
	}
	if len(problems) > 0 {
		return row, errors.New(strings.Join(problems[:min(len(problems), 5)], "; "))
	}
	return row, cleanUp(ctx, cat, survivors, outcomes)
}

func printMass(w io.Writer, rows []massRow, cfg massConfig) {
	fmt.Fprintf(w, "### Mass recovery: %d of %d hosts die at once with %d HA VMs (libvirt test driver for the %d survivors, %d vCPUs each, overcommit ratio 1; RECOVERY_CONCURRENCY %d; from starting every HostRecovery to the last done)\n\n",
		cfg.Dead, cfg.Hosts, cfg.VMs, cfg.Hosts-cfg.Dead, massCapacity, cfg.Concurrency)
	fmt.Fprintln(w, "| run | took | VMs recovered | VMs/s | running on the survivors at the end | most VMs on one survivor (allowed) | overcommitted survivors | outcome |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---|---|")
	var times []time.Duration
	recovered := 0
	for i, r := range rows {
		recovered += r.Recovered
		outcome := "all running"
		if r.Err != "" {
			outcome = "failed: " + shorten(r.Err, 200)
		}
		over := "none"
		if len(r.Overcommitted) > 0 {
			over = strings.Join(r.Overcommitted, ", ")
		}
		fmt.Fprintf(w, "| %d | %s | %d | %.1f | %d | %d (%d) | %s | %s |\n", i+1, round(r.Took), r.Recovered,
			float64(r.Recovered)/r.Took.Seconds(), r.Running, r.MaxPerHost, massCapacity, over, outcome)
		times = append(times, r.Took)
	}
	if len(times) > 0 {
		slices.Sort(times)
		med := times[len(times)/2]
		fmt.Fprintf(w, "\nmin %s, median %s, max %s; %d of %d VMs recovered over %d runs.\n", round(times[0]), round(med),
			round(times[len(times)-1]), recovered, cfg.VMs*len(rows), len(rows))
	}
	fmt.Fprintln(w)
}
