package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"vmha/activities"
	"vmha/types"
)

type steadyConfig struct {
	// Topology is the Temporal measured: topologyEmbedded or topologyCluster.
	Topology string
	Hosts    int
	Window   time.Duration
	Settle   time.Duration
	Slots    int
	Exe      string
}

// steadyRow is one host count's measurements.
type steadyRow struct {
	Topology string
	Hosts    int
	// StartMonitors is how long the N SignalWithStart calls took (32 at a time).
	StartMonitors time.Duration
	// Settled is how long until every monitor was healthy; zero when they were not all healthy within Settle.
	Settled time.Duration
	// HealthyAtStart and HealthyAtEnd count healthy monitors when the window opened and closed.
	HealthyAtStart, HealthyAtEnd int64
	// StartupEvents is the mean history length per monitor when the window opened.
	StartupEvents float64
	// WindowEvents is the number of history events all monitors added during the window, WindowEventTypes how
	// many of each type.
	WindowEvents     int64
	WindowEventTypes map[string]int
	// WatchRetries is how many watch activities were retried during the window (heartbeat timeouts, failures):
	// retries add no history event but mean the controller did not keep up.
	WatchRetries int64
	// NotStarted counts watches scheduled but not yet started by a worker when the window closed.
	NotStarted int
	// PollRejects counts the simulated hosts' polls the server refused during the window.
	PollRejects int64
	// DescribeFailures counts the controller's failed DescribeTaskQueue calls (its "describe task queue" warnings).
	DescribeFailures int
	Controller       procUse
	// Bench is this process: the embedded server too with that topology, only the simulated hosts with the cluster.
	Bench procUse
	// Nodes are the cluster nodes and Postgres their PostgreSQL's processes together (cluster only).
	Nodes    []procUse
	Postgres procUse
	// LoadStart and LoadEnd are the machine's one-minute load average when the window opened and closed.
	LoadStart, LoadEnd float64
}

// procUse is a process's CPU over the window and its memory at the end.
type procUse struct {
	CPUPercent float64
	RSSMiB     float64
	PeakMiB    float64
	PSSMiB     float64
}

func use(a, b procSample) procUse {
	return procUse{CPUPercent: cpuPercent(a, b), RSSMiB: float64(b.rssKiB) / 1024, PeakMiB: float64(b.hwmKiB) / 1024,
		PSSMiB: float64(b.pssKiB) / 1024}
}

// temporalSample samples the processes that serve Temporal apart from the bench: each cluster node, and
// PostgreSQL's processes together. The embedded server has none.
func temporalSample(be *backend) (nodes []procSample, pg procSample, err error) {
	if be.postgresPort == "" {
		return nil, pg, nil
	}
	for _, pid := range be.nodePIDs {
		s, err := sampleProc(pid)
		if err != nil {
			return nil, pg, fmt.Errorf("cluster node: %w", err)
		}
		nodes = append(nodes, s)
	}
	pg, err = samplePostgres(be.postgresPort)
	return nodes, pg, err
}

func runSteady(ctx context.Context, cfg steadyConfig, logger *slog.Logger) (row steadyRow, err error) {
	row.Hosts, row.Topology = cfg.Hosts, cfg.Topology
	srv, err := startBackend(ctx, cfg.Topology, logger)
	if err != nil {
		return row, err
	}
	defer func() { err = errors.Join(err, srv.stop()) }()
	target, err := listenProbeTarget()
	if err != nil {
		return row, err
	}
	defer target.close()

	child, childLog, err := startControllerChild(cfg, srv)
	if err != nil {
		return row, err
	}
	defer func() { err = errors.Join(err, stopChild(child)) }()

	specs := make([]types.HostSpec, cfg.Hosts)
	for i := range specs {
		specs[i] = hostSpec(fmt.Sprintf("sim%05d", i+1), target.port())
	}
	pollCtx, stopPolls := context.WithCancel(ctx)
	var rejects atomic.Int64
	var polls sync.WaitGroup
	for _, h := range specs {
		polls.Add(1)
		go func() {
			defer polls.Done()
			pollAsHost(pollCtx, srv.client, h.Name, &rejects)
		}()
	}
	defer func() { stopPolls(); polls.Wait() }()

	began := time.Now()
	upsert := &activities.Controller{Client: srv.client}
	if err := parallel(ctx, len(specs), 32, func(i int) error { return upsertPatiently(ctx, upsert.UpsertMonitor, specs[i]) }); err != nil {
		return row, err
	}
	row.StartMonitors = time.Since(began)
	logger.Info("monitors started", "hosts", cfg.Hosts, "took", row.StartMonitors.Round(time.Millisecond))

	row.Settled, row.HealthyAtStart, err = waitHealthyPatiently(ctx, srv.client, int64(cfg.Hosts), began, cfg.Settle, logger)
	if err != nil {
		return row, err
	}
	before, err := historyOf(ctx, srv.client, specs)
	if err != nil {
		return row, err
	}
	row.StartupEvents = float64(before.events) / float64(cfg.Hosts)
	rejects.Store(0)
	ctrl0, err := sampleProc(child.Process.Pid)
	if err != nil {
		return row, err
	}
	bench0, err := sampleProc(os.Getpid())
	if err != nil {
		return row, err
	}
	nodes0, pg0, err := temporalSample(srv)
	if err != nil {
		return row, err
	}
	row.LoadStart = loadAverage()
	logger.Info("window opens", "hosts", cfg.Hosts, "healthy", row.HealthyAtStart, "events_per_host", row.StartupEvents)
	select {
	case <-ctx.Done():
		return row, ctx.Err()
	case <-time.After(cfg.Window):
	}
	ctrl1, err := sampleProc(child.Process.Pid)
	if err != nil {
		return row, err
	}
	bench1, err := sampleProc(os.Getpid())
	if err != nil {
		return row, err
	}
	nodes1, pg1, err := temporalSample(srv)
	if err != nil {
		return row, err
	}
	row.LoadEnd = loadAverage()
	for i := range nodes1 {
		row.Nodes = append(row.Nodes, use(nodes0[i], nodes1[i]))
	}
	if len(nodes1) > 0 {
		row.Postgres = use(pg0, pg1)
	}
	row.PollRejects = rejects.Load()
	after, err := historyOf(ctx, srv.client, specs)
	if err != nil {
		return row, err
	}
	row.WindowEvents = after.events - before.events
	if row.WindowEventTypes, err = eventTypes(ctx, srv.client, before, after); err != nil {
		return row, err
	}
	row.WatchRetries = after.attempts - before.attempts
	row.NotStarted = after.notStarted
	if err := patiently(ctx, func() (err error) {
		row.HealthyAtEnd, err = countMonitors(ctx, srv.client, types.HostHealthy)
		return err
	}); err != nil {
		return row, err
	}
	row.Controller, row.Bench = use(ctrl0, ctrl1), use(bench0, bench1)
	row.DescribeFailures = countLines(childLog, "describe task queue")
	logger.Info("window closed", "hosts", cfg.Hosts, "events", row.WindowEvents, "controller_cpu_pct", row.Controller.CPUPercent)
	return row, nil
}

// startControllerChild runs this binary as the controller worker, with vmha's default settings.
func startControllerChild(cfg steadyConfig, srv *backend) (*exec.Cmd, string, error) {
	logPath := filepath.Join(srv.dir, "controller.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, "", fmt.Errorf("controller log: %w", err)
	}
	cmd := exec.Command(cfg.Exe, "-role="+roleController, fmt.Sprintf("-activity-slots=%d", cfg.Slots))
	cmd.Env = append(append(os.Environ(), srv.childEnv...), "VMHA_NAMESPACE="+namespace, passwordEnv+"=bench")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, "", fmt.Errorf("start controller child %s: %w", cfg.Exe, err)
	}
	// The child holds its own descriptor of the log.
	logFile.Close()
	return cmd, logPath, nil
}

func stopChild(cmd *exec.Cmd) error {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("controller child: %w", err)
		}
		return nil
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("controller child did not stop within 15s of SIGTERM: killed")
	}
}

// pollAsHost is a simulated hypervisor worker's presence: a long poll on the host's task queue, over and over,
// which is what makes DescribeTaskQueue report the host's worker alive. Nothing is ever scheduled there.
func pollAsHost(ctx context.Context, c client.Client, host string, rejects *atomic.Int64) {
	req := &workflowservice.PollActivityTaskQueueRequest{
		Namespace: namespace,
		TaskQueue: &taskqueuepb.TaskQueue{Name: types.HostTaskQueue(host), Kind: enumspb.TASK_QUEUE_KIND_NORMAL},
		Identity:  "bench-" + host,
	}
	for ctx.Err() == nil {
		pollCtx, cancel := context.WithTimeout(ctx, 70*time.Second)
		_, err := c.WorkflowService().PollActivityTaskQueue(pollCtx, req)
		cancel()
		if err != nil && ctx.Err() == nil {
			rejects.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// waitHealthy waits until n monitors report healthy or settle passes since began.
func waitHealthy(ctx context.Context, c client.Client, n int64, began time.Time, settle time.Duration, logger *slog.Logger) (time.Duration, int64, error) {
	for {
		healthy, err := countMonitors(ctx, c, types.HostHealthy)
		if err != nil {
			return 0, 0, err
		}
		if healthy == n {
			return time.Since(began), healthy, nil
		}
		if time.Since(began) > settle {
			logger.Warn("not every host became healthy", "healthy", healthy, "hosts", n, "after", settle)
			return 0, healthy, nil
		}
		logger.Debug("waiting for healthy", "healthy", healthy, "hosts", n)
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// histories sums what DescribeWorkflowExecution says about every monitor.
type histories struct {
	// lengths are each monitor's history length, by workflow ID.
	lengths    map[string]int64
	events     int64
	attempts   int64 // attempts of the pending watch activities, summed (1 each when nothing was retried)
	notStarted int   // watch activities scheduled but not picked up by a worker
}

func historyOf(ctx context.Context, c client.Client, specs []types.HostSpec) (histories, error) {
	var mu sync.Mutex
	h := histories{lengths: map[string]int64{}}
	err := parallel(ctx, len(specs), 16, func(i int) error {
		id := types.HostMonitorID(specs[i].Name)
		var resp *workflowservice.DescribeWorkflowExecutionResponse
		if err := patiently(ctx, func() (err error) {
			resp, err = c.DescribeWorkflowExecution(ctx, id, "")
			return err
		}); err != nil {
			return fmt.Errorf("describe monitor of %s: %w", specs[i].Name, err)
		}
		mu.Lock()
		defer mu.Unlock()
		h.lengths[id] = resp.GetWorkflowExecutionInfo().GetHistoryLength()
		h.events += resp.GetWorkflowExecutionInfo().GetHistoryLength()
		for _, a := range resp.GetPendingActivities() {
			h.attempts += int64(a.GetAttempt())
			if a.GetState() == enumspb.PENDING_ACTIVITY_STATE_SCHEDULED {
				h.notStarted++
			}
		}
		return nil
	})
	return h, err
}

// eventTypes counts the types of the events each monitor added between two readings of the histories, to tell what
// a steady state that is not steady spends its events on.
func eventTypes(ctx context.Context, c client.Client, before, after histories) (map[string]int, error) {
	var grown []string
	for id, n := range after.lengths {
		if n > before.lengths[id] {
			grown = append(grown, id)
		}
	}
	var mu sync.Mutex
	counts := map[string]int{}
	err := parallel(ctx, len(grown), 16, func(i int) error {
		id := grown[i]
		// The run that grew is the current one; a monitor that continued as new is not told apart here.
		it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return fmt.Errorf("history of %s: %w", id, err)
			}
			if ev.GetEventId() <= before.lengths[id] || ev.GetEventId() > after.lengths[id] {
				continue
			}
			mu.Lock()
			counts[strings.TrimPrefix(ev.GetEventType().String(), "EVENT_TYPE_")]++
			mu.Unlock()
		}
		return nil
	})
	return counts, err
}

// patiently retries fn once a second for up to a minute: on this shared machine a busy server times calls out.
func patiently(ctx context.Context, fn func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := fn()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

// parallel runs fn(0..n-1) with at most width at once and returns the first error.
func parallel(ctx context.Context, n, width int, fn func(i int) error) error {
	next := make(chan int)
	errs := make(chan error, width)
	var wg sync.WaitGroup
	for range width {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	return err
}

func countLines(path, substr string) int {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), substr) {
			n++
		}
	}
	return n
}

func printSteady(w io.Writer, rows []steadyRow, window time.Duration) {
	for _, topo := range []string{topologyEmbedded, topologyCluster} {
		var these []steadyRow
		for _, r := range rows {
			if r.Topology == topo {
				these = append(these, r)
			}
		}
		if len(these) > 0 {
			printSteadyTable(w, topo, these, window)
		}
	}
}

func printSteadyTable(w io.Writer, topo string, rows []steadyRow, window time.Duration) {
	header := "| hosts | start monitors | all healthy after | healthy at start/end of window | history events/host at start | events in window | events/host/hour | watch retries in window | watches scheduled, not started | controller CPU (% of 1 core) | controller RSS (peak) MiB | "
	align := "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	if topo == topologyCluster {
		fmt.Fprintf(w, "### Steady state on the cluster (window %s after all hosts healthy; controller = child process running the controller worker; 3 vmha server nodes on PostgreSQL)\n\n", window)
		header += "bench: simulated hosts CPU (% of 1 core) | bench: simulated hosts RSS MiB | refused host polls in window | failed DescribeTaskQueue (whole run) | nodes CPU (% of 1 core) | nodes RSS MiB | PostgreSQL CPU (% of 1 core) | PostgreSQL RSS sum (PSS sum) MiB | load (1 min) at start / end |"
		align += "---:|---:|---:|---:|---:|"
	} else {
		fmt.Fprintf(w, "### Steady state (window %s after all hosts healthy; controller = child process running the controller worker)\n\n", window)
		header += "server+simulated hosts CPU (% of 1 core) | server+simulated hosts RSS MiB | refused host polls in window | failed DescribeTaskQueue (whole run) | load (1 min) at start / end |"
		align += "---:|"
	}
	fmt.Fprintln(w, header)
	fmt.Fprintln(w, align)
	for _, r := range rows {
		settled := "not within settle"
		if r.Settled > 0 {
			settled = r.Settled.Round(100 * time.Millisecond).String()
		}
		perHour := float64(r.WindowEvents) / float64(r.Hosts) / window.Hours()
		fmt.Fprintf(w, "| %d | %s | %s | %d / %d | %.1f | %d | %.2f | %d | %d | %.1f | %.0f (%.0f) | %.1f | %.0f | %d | %d |",
			r.Hosts, r.StartMonitors.Round(100*time.Millisecond), settled, r.HealthyAtStart, r.HealthyAtEnd, r.StartupEvents,
			r.WindowEvents, perHour, r.WatchRetries, r.NotStarted, r.Controller.CPUPercent, r.Controller.RSSMiB, r.Controller.PeakMiB,
			r.Bench.CPUPercent, r.Bench.RSSMiB, r.PollRejects, r.DescribeFailures)
		if topo == topologyCluster {
			var cpu, rss []string
			for _, n := range r.Nodes {
				cpu = append(cpu, fmt.Sprintf("%.1f", n.CPUPercent))
				rss = append(rss, fmt.Sprintf("%.0f", n.RSSMiB))
			}
			fmt.Fprintf(w, " %s | %s | %.1f | %.0f (%.0f) |", strings.Join(cpu, " / "), strings.Join(rss, " / "),
				r.Postgres.CPUPercent, r.Postgres.RSSMiB, r.Postgres.PSSMiB)
		}
		fmt.Fprintf(w, " %.1f / %.1f |\n", r.LoadStart, r.LoadEnd)
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		if len(r.WindowEventTypes) == 0 {
			continue
		}
		var kinds []string
		for t, n := range r.WindowEventTypes {
			kinds = append(kinds, fmt.Sprintf("%s %d", t, n))
		}
		slices.Sort(kinds)
		fmt.Fprintf(w, "Events in the window, %d hosts: %s\n\n", r.Hosts, strings.Join(kinds, ", "))
	}
}
