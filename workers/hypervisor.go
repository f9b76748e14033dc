package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"go.temporal.io/sdk/worker"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/heartbeat"
	"vmha/activities/hypervisor"
	"vmha/infra/config"
	"vmha/types"
)

// RunHypervisor serves one host until ctx ends: its own task queue (libvirt calls that must run here), the share
// queue (catalog reads any host that sees the share can serve) and the keeper that follows libvirt's events into
// the catalog.
func RunHypervisor(ctx context.Context, s config.Settings, c client.Client, logger *slog.Logger) error {
	if !types.ValidName(s.HostName) {
		return fmt.Errorf("%s_HOST_NAME=%q: set it to this host's name in the inventory", config.Prefix, s.HostName)
	}
	logger = logger.With("host", s.HostName)
	checkLockManager(s.QEMUConf, logger)
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
	hw := HypervisorWorkers(c, s, hv, logger)
	if err := hw.Start(ctx); err != nil {
		return err
	}
	logger.Info("hypervisor worker started", "task_queue", types.HostTaskQueue(s.HostName), "libvirt", s.LibvirtURI, "share", s.SharePath)
	<-ctx.Done()
	hw.Stop()
	return nil
}

// HostWorkers is one hypervisor's workers: its own task queue with the host activities (interceptors apply
// there), the share queue served only while the share's marker is visible (ShareSupervisor), and the keeper of
// its catalog entries (see KeepCatalog), and the storage heartbeat with its watchdog (see HostHeartbeat).
type HostWorkers struct {
	Own       worker.Worker
	Share     *ShareSupervisor
	Keeper    *activities.Keeper
	Heartbeat *heartbeat.Writer
	Stats     *HostStatsCache
	logger    *slog.Logger

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// HypervisorWorkers wires one host's workers, not started.
func HypervisorWorkers(c client.Client, s config.Settings, hv activities.Hypervisor, logger *slog.Logger,
	interceptors ...interceptor.WorkerInterceptor) *HostWorkers {
	cat := catalog.New(s.SharePath, s.ShareTimeout)
	host := &activities.Host{Name: s.HostName, Hypervisor: hv, Catalog: cat, DomainType: domainType(), SharePath: s.SharePath,
		ShareTimeout: s.ShareTimeout, Logger: logger}
	identity := hostIdentity(s.HostName).String()
	// Hypervisor workers run activities only: no workflow polls to cost the server.
	own := worker.New(c, types.HostTaskQueue(s.HostName), worker.Options{DisableWorkflowWorker: true, Interceptors: interceptors,
		Identity: identity})
	own.RegisterActivity(host)
	keeper := &activities.Keeper{Host: s.HostName, Hypervisor: hv, Catalog: cat, Strays: strayReporter{c}, Logger: logger}
	share := &ShareSupervisor{
		Check: func(ctx context.Context) error {
			_, err := cat.Check(ctx)
			return err
		},
		Start: func() (func(), error) {
			// Every host that sees the share serves its queue; one poller each is plenty and keeps the server's
			// poll count per host low.
			w := worker.New(c, types.ShareTaskQueue, worker.Options{MaxConcurrentActivityTaskPollers: 1, DisableWorkflowWorker: true,
				Identity: identity})
			w.RegisterActivity(&activities.Share{Catalog: cat})
			if err := w.Start(); err != nil {
				return nil, err
			}
			return w.Stop, nil
		},
		Regained: keeper.Resync,
		Interval: DefaultShareCheckInterval,
		Logger:   logger,
		Share:    s.SharePath,
	}
	stats := &HostStatsCache{Host: s.HostName, Hypervisor: hv, Every: statsEvery, Logger: logger}
	beat := HostHeartbeat(s, logger)
	beat.Stats = stats.Latest
	return &HostWorkers{Own: own, Share: share, Keeper: keeper, Heartbeat: beat, Stats: stats, logger: logger}
}

// statsEvery is how often a host measures its stats for its heartbeat: placement takes them as long as they are at
// most 10 s old (activities.statsMaxAge), so a missed measurement or two only make a recovery ask the host itself.
const statsEvery = 2 * time.Second

// HostStatsCache measures the host's load, memory and running VMs (libvirt) every Every in the background and keeps
// the latest for its storage heartbeat, which must never wait for libvirt: a renewal is the host's proof of life. A
// measurement that fails clears them, so no heartbeat carries stats of a host that can no longer measure them. They
// say the host sees the shared storage: they reach a reader only inside a heartbeat this host just wrote there.
type HostStatsCache struct {
	Host       string
	Hypervisor activities.Hypervisor
	Every      time.Duration
	Logger     *slog.Logger
	latest     atomic.Pointer[types.HostStats]
}

// Latest is the newest measurement, nil when there is none.
func (c *HostStatsCache) Latest() *types.HostStats { return c.latest.Load() }

// Run measures until ctx ends.
func (c *HostStatsCache) Run(ctx context.Context) {
	tick := time.NewTicker(c.Every)
	defer tick.Stop()
	for {
		mctx, cancel := context.WithTimeout(ctx, c.Every)
		st, err := c.Hypervisor.Stats(mctx)
		cancel()
		if err != nil {
			c.latest.Store(nil)
			c.Logger.Debug("host stats for the heartbeat", "error", err)
		} else {
			st.Host, st.SharedStorageOK = c.Host, true
			c.latest.Store(&st)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Start starts the host's own worker and checks the share once (starting the share worker if its marker is
// visible), then supervises the share, runs the keeper, measures the host's stats and renews the storage heartbeat
// in the background until ctx ends or Stop.
func (h *HostWorkers) Start(ctx context.Context) error {
	if err := h.Own.Start(); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	ctx, h.cancel = context.WithCancel(ctx)
	h.Share.Step(ctx)
	h.done.Add(4)
	go func() {
		defer h.done.Done()
		h.Heartbeat.Run(ctx)
	}()
	go func() {
		defer h.done.Done()
		h.Stats.Run(ctx)
	}()
	go func() {
		defer h.done.Done()
		h.Share.Run(ctx)
	}()
	go func() {
		defer h.done.Done()
		KeepCatalog(ctx, h.Keeper, h.logger)
	}()
	return nil
}

// Stop stops the share supervision, the keeper, the heartbeat (disarming the watchdog once the last heartbeat
// says so) and both workers, and waits for them.
func (h *HostWorkers) Stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.done.Wait()
	h.Own.Stop()
}

// openLibvirt waits for libvirtd: on a host that just booted, the worker may start first.
func openLibvirt(ctx context.Context, uri string, logger *slog.Logger) (*hypervisor.Libvirt, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var hv *hypervisor.Libvirt
	var err error
	if waitErr := activities.PollUntil(ctx, 500*time.Millisecond, func() bool {
		hv, err = hypervisor.Open(ctx, uri, logger)
		if err != nil {
			logger.Warn("libvirt not answering yet", "uri", uri, "error", err)
		}
		return err == nil
	}); waitErr != nil {
		return nil, fmt.Errorf("open libvirt %s (%s_LIBVIRT_URI): %w", uri, config.Prefix, errors.Join(err, waitErr))
	}
	return hv, nil
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
