package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/hypervisor"
	"vmha/infra/config"
	"vmha/types"
)

// RunHypervisor serves one host until ctx ends: its own task queue (libvirt calls that must run here), the share
// queue (catalog reads any host can serve) and the keeper that follows libvirt's events into the catalog.
func RunHypervisor(ctx context.Context, s config.Settings, c client.Client, logger *slog.Logger) error {
	if !types.ValidName(s.HostName) {
		return fmt.Errorf("%s_HOST_NAME=%q: set it to this host's name in the inventory", config.Prefix, s.HostName)
	}
	logger = logger.With("host", s.HostName)
	if err := checkHostQueue(ctx, c, hostIdentity(s.HostName), logger); err != nil {
		return err
	}
	hv, err := openLibvirt(ctx, s.LibvirtURI, logger)
	if err != nil {
		return err
	}
	defer hv.Close()
	if err := hv.Warm(ctx, domainType()); err != nil {
		logger.Warn("emulator not probed ahead of time: the first define here will be slower", "error", err)
	}
	ws, keeper := HypervisorWorkers(c, s, hv, logger)
	go KeepCatalog(ctx, keeper, logger)
	logger.Info("hypervisor worker started", "task_queue", types.HostTaskQueue(s.HostName), "libvirt", s.LibvirtURI, "share", s.SharePath)
	return run(ctx, ws...)
}

// HypervisorWorkers are one host's two workers, not started: its own task queue with the host activities
// (interceptors apply there) and the share queue, plus the keeper of its catalog entries (see KeepCatalog).
func HypervisorWorkers(c client.Client, s config.Settings, hv activities.Hypervisor, logger *slog.Logger,
	interceptors ...interceptor.WorkerInterceptor) ([]worker.Worker, *activities.Keeper) {
	ledger := &activities.Ledger{Catalog: catalog.New(s.SharePath, s.ShareTimeout)}
	host := &activities.Host{Name: s.HostName, Hypervisor: hv, Ledger: ledger, DomainType: domainType(), SharePath: s.SharePath,
		ShareTimeout: s.ShareTimeout, Logger: logger}
	// Hypervisor workers run activities only: no workflow polls to cost the server.
	own := worker.New(c, types.HostTaskQueue(s.HostName), worker.Options{DisableWorkflowWorker: true, Interceptors: interceptors,
		Identity: hostIdentity(s.HostName).String()})
	own.RegisterActivity(host)
	// Every host serves the share queue; one poller each is plenty and keeps the server's poll count per host low.
	share := worker.New(c, types.ShareTaskQueue, worker.Options{MaxConcurrentActivityTaskPollers: 1, DisableWorkflowWorker: true,
		Identity: hostIdentity(s.HostName).String()})
	share.RegisterActivity(&activities.Share{Catalog: ledger.Catalog})
	return []worker.Worker{own, share}, &activities.Keeper{Host: s.HostName, Hypervisor: hv, Ledger: ledger, Logger: logger}
}

// openLibvirt waits for libvirtd: on a host that just booted, the worker may start first.
func openLibvirt(ctx context.Context, uri string, logger *slog.Logger) (*hypervisor.Libvirt, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		hv, err := hypervisor.Open(ctx, uri, logger)
		if err == nil {
			return hv, nil
		}
		logger.Warn("libvirt not answering yet", "uri", uri, "error", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open libvirt %s (%s_LIBVIRT_URI): %w", uri, config.Prefix, errors.Join(err, ctx.Err()))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// KeepCatalog runs the keeper until ctx ends, restarting it when its event stream breaks (libvirtd restarted, say).
func KeepCatalog(ctx context.Context, k *activities.Keeper, logger *slog.Logger) {
	for ctx.Err() == nil {
		if err := k.Run(ctx); err != nil {
			logger.Error("catalog keeper stopped; restarting", "error", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// domainType is kvm where the kernel offers it, else qemu (software emulation): the same XML works on both.
func domainType() string {
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		return "kvm"
	}
	return "qemu"
}
