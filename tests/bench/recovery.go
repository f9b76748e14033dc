package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.temporal.io/sdk/client"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/domainxml"
	"vmha/activities/hypervisor"
	"vmha/infra/config"
	"vmha/types"
	"vmha/workers"
	"vmha/workflows"
)

type recoveryConfig struct {
	VMs         int
	Concurrency []int
	Reps        int
}

// recoveryRow is one RECOVERY_CONCURRENCY's repetitions.
type recoveryRow struct {
	Concurrency int
	Times       []time.Duration
	// Placed counts the VMs that ended on each target, over all repetitions.
	Placed map[string]int
}

const failedHost = "hv1"

// targetHosts survive hv1; each has its own libvirt test driver state (test:///<node file>).
var targetHosts = []string{"hv2", "hv3"}

// nodeXML is a test-driver hypervisor big enough for every VM of every repetition.
const nodeXML = `<node>
  <cpu><mhz>2000</mhz><model>bench</model><active>64</active><max>64</max><nodes>1</nodes><sockets>4</sockets><cores>8</cores><threads>2</threads></cpu>
  <memory>268435456</memory>
</node>
`

// simHost is a surviving hypervisor: libvirt test driver and the hypervisor worker's two task queues plus its keeper,
// wired like workers.RunHypervisor (which cannot be handed a libvirt connection we can clean up between runs).
type simHost struct {
	name    string
	hv      *hypervisor.Libvirt
	workers *workers.HostWorkers
}

func runRecovery(ctx context.Context, cfg recoveryConfig, logger *slog.Logger) (rows []recoveryRow, err error) {
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

	w, ctrl, err := startBenchController(srv.client, "")
	if err != nil {
		return nil, err
	}
	defer w.Stop()

	target, err := listenProbeTarget()
	if err != nil {
		return nil, err
	}
	defer target.close()
	for _, name := range targetHosts {
		if err := ctrl.UpsertMonitor(ctx, hostSpec(name, target.port())); err != nil {
			return nil, err
		}
	}
	if _, healthy, err := waitHealthy(ctx, srv.client, int64(len(targetHosts)), time.Now(), time.Minute, logger); err != nil || healthy != int64(len(targetHosts)) {
		return nil, errors.Join(err, fmt.Errorf("%d of %d target hosts healthy after a minute: recovery needs them healthy", healthy, len(targetHosts)))
	}

	incident := 0
	for _, conc := range cfg.Concurrency {
		// Read by the LoadPolicy activity only, which no workflow runs between two recoveries.
		ctrl.Policy.RecoveryConcurrency = conc
		row := recoveryRow{Concurrency: conc, Placed: map[string]int{}}
		for range cfg.Reps {
			incident++
			took, placed, _, err := recoverOnce(ctx, srv.client, cat, hosts, cfg.VMs, incident, share)
			if err != nil {
				return rows, fmt.Errorf("concurrency %d, incident %d: %w", conc, incident, err)
			}
			logger.Info("recovered", "vms", cfg.VMs, "concurrency", conc, "incident", incident, "took", took.Round(time.Millisecond), "placed", placed)
			row.Times = append(row.Times, took)
			for h, n := range placed {
				row.Placed[h] += n
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// prepareShare makes the share of a recovery bench in the server's directory: the marker and an empty catalog.
func prepareShare(ctx context.Context, srv *server) (string, *catalog.Dir, error) {
	share := filepath.Join(srv.dir, "share")
	if err := os.MkdirAll(share, 0o755); err != nil {
		return "", nil, err
	}
	if _, _, err := catalog.Init(ctx, share, 5*time.Second); err != nil {
		return "", nil, err
	}
	return share, catalog.New(share, 5*time.Second), nil
}

// startSimHosts starts a simulated host per name on the share; stop ends them all (also those started before a
// failure, which it has stopped already when it returns an error).
func startSimHosts(ctx context.Context, srv *server, share string, names []string) (hosts map[string]*simHost, stop func(), err error) {
	hosts = map[string]*simHost{}
	stop = func() {
		for _, h := range hosts {
			h.stop()
		}
	}
	for _, name := range names {
		h, err := startSimHost(ctx, srv, name, share)
		if err != nil {
			stop()
			return nil, nil, err
		}
		hosts[name] = h
	}
	return hosts, stop, nil
}

func startSimHost(ctx context.Context, srv *server, name, share string) (*simHost, error) {
	node := filepath.Join(srv.dir, name+".xml")
	if err := os.WriteFile(node, []byte(nodeXML), 0o600); err != nil {
		return nil, fmt.Errorf("node file of %s: %w", name, err)
	}
	logger := quiet()
	hv, err := hypervisor.Open(ctx, "test://"+node, logger)
	if err != nil {
		return nil, err
	}
	s := config.Settings{HostName: name, SharePath: share, ShareTimeout: 5 * time.Second}
	h := &simHost{name: name, hv: hv}
	hw := workers.HypervisorWorkers(srv.client, s, fileNode{hv}, logger)
	if err := hw.Start(ctx); err != nil {
		h.stop()
		return nil, fmt.Errorf("start worker of %s: %w", name, err)
	}
	h.workers = hw
	return h, nil
}

// fileNode is a test-driver host read from a node file. Such a node has no NUMA cells, so libvirt reports no free
// memory (virNodeGetFreeMemory returns 0, an error to the Go binding) and hypervisor.Stats fails; fileNode answers
// Stats from the node file's size and the running bench VMs (1 vCPU, 64 MiB each) instead, after the same
// CPU-sampling pause the real Stats takes. Every other call is the real libvirt code.
type fileNode struct {
	*hypervisor.Libvirt
}

const (
	nodeCPUs      = 64
	nodeMemoryMiB = 256 * 1024
	vmMemoryMiB   = 64
	// statsSampleGap is hypervisor.Stats' pause between its two CPU samples.
	statsSampleGap = 150 * time.Millisecond
)

func (n fileNode) Stats(ctx context.Context) (types.HostStats, error) {
	doms, err := n.Domains(ctx)
	if err != nil {
		return types.HostStats{}, err
	}
	st := types.HostStats{CPUs: nodeCPUs, MemoryTotalMiB: nodeMemoryMiB}
	for _, d := range doms {
		if d.State == types.DomainRunning {
			st.VCPUsAllocated++
			st.MemoryAllocatedMiB += vmMemoryMiB
		}
	}
	st.MemoryFreeMiB = nodeMemoryMiB - st.MemoryAllocatedMiB
	select {
	case <-ctx.Done():
		return types.HostStats{}, ctx.Err()
	case <-time.After(statsSampleGap):
	}
	st.SampledAt = time.Now().UTC()
	return st, nil
}

func (h *simHost) stop() {
	if h.workers != nil {
		h.workers.Stop()
	}
	_ = h.hv.Close()
}

// recoverOnce records vms HA VMs owned by the failed host in the catalog, runs HostRecovery for it as the monitor
// does once death is confirmed, checks that every VM runs on a target, then removes them again. It returns the
// VMs' UUIDs, which name their RecoverVM workflows, even when the recovery failed.
func recoverOnce(ctx context.Context, c client.Client, cat *catalog.Dir, hosts map[string]*simHost, vms, incident int, share string) (time.Duration, map[string]int, []string, error) {
	ids := make([]string, vms)
	for i := range ids {
		var err error
		if ids[i], err = putVM(ctx, cat, share, failedHost, fmt.Sprintf("i%d-vm%02d", incident, i+1), i%3); err != nil {
			return 0, nil, ids, err
		}
	}

	began := time.Now()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: types.HostRecoveryID(failedHost, fmt.Sprint("bench-", incident), 1), TaskQueue: types.ControllerTaskQueue,
		WorkflowExecutionErrorWhenAlreadyStarted: true,
	}, types.HostRecoveryWorkflow, workflows.HostRecoveryInput{Host: failedHost, Incident: fmt.Sprint("bench-", incident), Round: 1, Cause: "bench", DeclaredAt: began})
	if err != nil {
		return 0, nil, ids, fmt.Errorf("start recovery: %w", err)
	}
	var res types.RecoveryResult
	if err := run.Get(ctx, &res); err != nil {
		return time.Since(began), nil, ids, fmt.Errorf("recovery %s: %w", run.GetID(), err)
	}
	took := time.Since(began)

	placed := map[string]int{}
	var problems []string
	for _, o := range res.Outcomes {
		h, ok := hosts[o.Target]
		if !o.Recovered || !ok {
			problems = append(problems, fmt.Sprintf("%s: not recovered (%s)", o.VM, o.Reason))
			continue
		}
		if st, err := h.hv.State(ctx, o.UUID); err != nil || st != types.DomainRunning {
			problems = append(problems, fmt.Sprintf("%s: reported on %s but libvirt says %s (%v)", o.VM, o.Target, st, err))
			continue
		}
		placed[o.Target]++
	}
	if len(res.Outcomes) != vms {
		problems = append(problems, fmt.Sprintf("%d outcomes for %d VMs", len(res.Outcomes), vms))
	}
	if len(problems) > 0 {
		return took, placed, ids, errors.New(strings.Join(problems, "; "))
	}
	return took, placed, ids, cleanUp(ctx, cat, hosts, res.Outcomes)
}

// putVM records an HA VM of 1 vCPU owned by owner in the catalog, as a test-driver domain, and returns its UUID.
func putVM(ctx context.Context, cat *catalog.Dir, share, owner, name string, priority int) (string, error) {
	id := uuid.NewString()
	xml, err := domainxml.Build(domainxml.Spec{Name: name, UUID: id, VCPUs: 1, MemoryMiB: vmMemoryMiB,
		DiskPath: filepath.Join(share, "disks", name+".qcow2"), DiskFormat: "qcow2", DomainType: "qemu",
		Policy: types.HAPolicy{Enabled: true, Priority: priority}})
	if err != nil {
		return id, err
	}
	// The test driver only runs domains of its own type.
	xml = strings.Replace(xml, `<domain type="qemu">`, `<domain type="test">`, 1)
	rec, err := domainxml.Parse(xml)
	if err != nil {
		return id, err
	}
	rec.Owner, rec.Generation, rec.UpdatedAt = owner, 1, time.Now().UTC()
	return id, cat.Put(ctx, activities.CatalogEntry{VMRecord: rec, XML: xml})
}

// cleanUp removes a run's VMs so that every repetition starts from the same empty targets.
func cleanUp(ctx context.Context, cat *catalog.Dir, hosts map[string]*simHost, outcomes []types.VMOutcome) error {
	var errs []error
	for _, o := range outcomes {
		h := hosts[o.Target]
		errs = append(errs, h.hv.Destroy(ctx, o.UUID), h.hv.Undefine(ctx, o.UUID))
		if err := cat.Delete(ctx, o.UUID); err != nil && !errors.Is(err, activities.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func printRecovery(w io.Writer, rows []recoveryRow, vms int) {
	fmt.Fprintf(w, "### Recovery of a host with %d HA VMs (libvirt test driver, 2 surviving hosts; from HostRecovery start to all VMs confirmed running)\n\n", vms)
	fmt.Fprintln(w, "| RECOVERY_CONCURRENCY | runs | min | median | max | VMs/s (median) | placed |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		times := slices.Clone(r.Times)
		slices.Sort(times)
		med := times[len(times)/2]
		var placed []string
		for _, h := range targetHosts {
			placed = append(placed, fmt.Sprintf("%s %d", h, r.Placed[h]))
		}
		fmt.Fprintf(w, "| %d | %d | %s | %s | %s | %.1f | %s |\n", r.Concurrency, len(times), round(times[0]), round(med),
			round(times[len(times)-1]), float64(vms)/med.Seconds(), strings.Join(placed, ", "))
	}
	fmt.Fprintln(w)
}

func round(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
