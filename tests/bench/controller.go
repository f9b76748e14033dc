package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"vmha/activities"
	"vmha/infra/config"
	"vmha/infra/temporalclient"
	"vmha/types"
	"vmha/workers"
)

// alwaysOn is a BMC that answers "power on" at once: the benchmark measures vmha, not IPMI round trips.
type alwaysOn struct{}

func (alwaysOn) PowerStatus(context.Context, types.BMCSpec, string) (types.PowerState, error) {
	return types.PowerOn, nil
}

func (alwaysOn) PowerOff(context.Context, types.BMCSpec, string) error { return nil }

// silent drops notifications: no webhook is configured in the benchmark.
type silent struct{}

func (silent) Notify(context.Context, types.Event) error { return nil }

// controllerWorker is the controller worker as workers.RunController builds it, with the fake BMC and notifier.
// slots overrides VMHA_MAX_WATCHES (0 keeps the setting).
func controllerWorker(c client.Client, s config.Settings, slots int, logger *slog.Logger) (*multiWorker, *activities.Controller) {
	if slots > 0 {
		s.MaxWatches = slots
	}
	ctrl := workers.NewController(s, c, alwaysOn{}, silent{}, logger)
	return &multiWorker{workers.ControllerWorkers(c, s, ctrl)}, ctrl
}

// multiWorker starts and stops the controller's workers together.
type multiWorker struct{ ws []worker.Worker }

func (m *multiWorker) Start() error {
	for _, w := range m.ws {
		if err := w.Start(); err != nil {
			return err
		}
	}
	return nil
}

func (m *multiWorker) Stop() {
	for _, w := range m.ws {
		w.Stop()
	}
}

// runControllerChild is the controller process of a steady-state run: settings from VMHA_* (defaults unless the
// parent set them), the server from VMHA_TEMPORAL_ADDRESS and, for the cluster, VMHA_TLS_*.
func runControllerChild(ctx context.Context, slots int, logger *slog.Logger) error {
	s, err := config.Load()
	if err != nil {
		return err
	}
	// As vmha controller dials: VMHA_TLS_* (the cluster's controller certificate) when set. The SDK logs its
	// warnings only.
	c, err := temporalclient.Dial(ctx, s, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("component", "sdk"))
	if err != nil {
		return err
	}
	defer c.Close()
	w, _ := controllerWorker(c, s, slots, logger)
	if err := w.Start(); err != nil {
		return fmt.Errorf("start controller worker: %w", err)
	}
	<-ctx.Done()
	w.Stop()
	return nil
}

// startBenchController starts the controller worker of a recovery bench in this process, with vmha's default
// settings and the fake BMC's password; with a share, the controller reads the hosts' storage heartbeats there.
func startBenchController(c client.Client, share string) (*multiWorker, *activities.Controller, error) {
	s, err := config.Load()
	if err != nil {
		return nil, nil, err
	}
	if share != "" {
		s.SharePath, s.HeartbeatStoppedAfter = share, 10*time.Second
	}
	if err := os.Setenv(passwordEnv, "bench"); err != nil {
		return nil, nil, err
	}
	w, ctrl := controllerWorker(c, s, 0, quiet())
	if err := w.Start(); err != nil {
		return nil, nil, fmt.Errorf("start controller worker: %w", err)
	}
	return w, ctrl, nil
}
