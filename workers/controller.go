// Package workers runs vmha's two kinds of Temporal workers: the controller (workflows, probes, placement,
// notifications; several replicas may run) and the hypervisor worker (one per host: libvirt calls and catalog
// writes on that host's own task queue).
package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"vmha/activities"
	"vmha/activities/bmc"
	"vmha/activities/catalog"
	"vmha/activities/heartbeat"
	"vmha/activities/notify"
	"vmha/infra/config"
	"vmha/infra/monitoring"
	"vmha/types"
	"vmha/workflows"
)

// RunController serves the controller task queue until ctx ends: every workflow, and the activities that probe
// hosts, fence them, place VMs and tell users. It also serves /metrics on MetricsAddr: vmha's own metrics and the
// Temporal SDK's, whose workflow task failures are the only sign of a workflow the workers cannot replay.
func RunController(ctx context.Context, s config.Settings, c client.Client, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sdkMetrics, sdkMetricsFlush := monitoring.SDKMetrics(reg, logger)
	defer sdkMetricsFlush.Close()
	// The SDK takes its metrics handler from the client: this one shares c's connection.
	c, err := client.NewClientFromExistingWithContext(ctx, c, client.Options{Namespace: s.Namespace,
		Logger: sdklog.NewStructuredLogger(logger), MetricsHandler: sdkMetrics})
	if err != nil {
		return fmt.Errorf("temporal client with SDK metrics (namespace %s): %w", s.Namespace, err)
	}
	defer c.Close()
	notifier, err := notify.New(notify.Options{WebhookURL: s.WebhookURL, WebhookSecret: s.WebhookSecret, Logger: logger, Registry: reg})
	if err != nil {
		return fmt.Errorf("notifier: %w", err)
	}
	if s.MetricsAddr != "" {
		stop, err := serveMetrics(s.MetricsAddr, notify.Handler(reg), logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	ws := ControllerWorkers(c, s, NewController(s, c, bmc.New(s.BMCTimeout, logger), notifier, logger))
	logger.Info("controller worker started", "task_queues", []string{types.ControllerTaskQueue, types.WatchTaskQueue},
		"max_watches", s.MaxWatches, "metrics", s.MetricsAddr)
	return run(ctx, ws...)
}

// ControllerWorkers are the controller's two workers: workflows and control steps on the controller queue, and
// the host watches on their own queue, where every watched host holds one mostly sleeping activity for up to an
// hour (MaxWatches of them), so they never take the slots a recovery's steps need.
func ControllerWorkers(c client.Client, s config.Settings, controller *activities.Controller) []worker.Worker {
	// A workflow task waits this long on the sticky queue of the replica that ran the workflow's last task before
	// any replica may take it: when that replica died, a recovery stalls for it (SDK default 5 s, seen in
	// TestLabCluster). A live replica answers within milliseconds.
	w := worker.New(c, types.ControllerTaskQueue, worker.Options{StickyScheduleToStartTimeout: 2 * time.Second})
	workflows.Register(w)
	w.RegisterActivity(controller)
	watches := worker.New(c, types.WatchTaskQueue, worker.Options{MaxConcurrentActivityExecutionSize: s.MaxWatches, DisableWorkflowWorker: true})
	watches.RegisterActivityWithOptions(controller.WatchHost, activity.RegisterOptions{Name: "WatchHost"})
	return []worker.Worker{w, watches}
}

// NewController wires the controller's activities from the settings.
func NewController(s config.Settings, c client.Client, power activities.PowerController, n activities.Notifier, logger *slog.Logger) *activities.Controller {
	return &activities.Controller{
		Client:   c,
		Power:    power,
		Notifier: n,
		Logger:   logger,
		Probe: activities.ProbeSettings{
			Interval:                s.ProbeInterval,
			NetworkTimeout:          s.ProbeTimeout,
			BMCTimeout:              s.BMCTimeout,
			MissesBeforeSuspect:     s.MissesBeforeSuspect,
			MissesBeforeDead:        s.MissesBeforeDead,
			MissesBeforeUnreachable: s.MissesBeforeUnreachable,
			Budget:                  s.ProbeBudget,
			PowerConfirmations:      s.PowerConfirmations,
			WorkerGrace:             s.WorkerGrace,
			BMCIdleInterval:         s.BMCIdleInterval,
			HeartbeatStoppedAfter:   s.HeartbeatStoppedAfter,
		},
		Policy: types.Policy{
			RecoveryConcurrency: s.RecoveryConcurrency,
			OvercommitRatio:     s.OvercommitRatio,
			HostReserveMiB:      s.HostReserveMiB,
			FenceTimeout:        s.FenceTimeout,
			FenceHung:           s.FenceHung,
			FenceStorageLost:    s.FenceStorageLost,
			UnknownReminder:     s.UnknownReminder,
		},
		Heartbeats: heartbeatReader(s, logger),
	}
}

// serveMetrics listens at once, so a busy port is an error at start-up rather than a log line later.
func serveMetrics(addr string, h http.Handler, logger *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener %s (VMHA_METRICS_ADDR): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server", "error", err)
		}
	}()
	return func() { _ = srv.Close() }, nil
}

// run starts the workers and stops them when ctx ends.
func run(ctx context.Context, ws ...worker.Worker) error {
	for i, w := range ws {
		if err := w.Start(); err != nil {
			for _, started := range ws[:i] {
				started.Stop()
			}
			return fmt.Errorf("start worker: %w", err)
		}
	}
	<-ctx.Done()
	for _, w := range ws {
		w.Stop()
	}
	return nil
}

// heartbeatReader reads the hosts' storage heartbeats from this controller's own mount of the share. Without one
// (VMHA_SHARE_PATH not mounted here) every verdict is "unknown": no hung or storage-lost host is ever detected, so
// the controller says so.
func heartbeatReader(s config.Settings, logger *slog.Logger) activities.HeartbeatReader {
	if s.HeartbeatStoppedAfter <= 0 {
		logger.Warn("storage heartbeat verdicts off (VMHA_HEARTBEAT_STOPPED_AFTER=0): hung hosts are not detected")
		return nil
	}
	if _, err := os.Stat(catalog.MarkerPath(s.SharePath)); err != nil {
		logger.Warn("the share is not visible to this controller: hung and storage-lost hosts are detected only once it is",
			"share", s.SharePath, "error", err)
	}
	return heartbeat.NewReader(s.SharePath, s.BMCTimeout)
}
