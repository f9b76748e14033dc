// Command bench measures vmha against the embedded Temporal server and prints markdown tables:
//
//   - steady state: N hosts watched by the real controller worker (run as a child process so that its CPU and
//     memory are its own), the history events they cost per host per hour, and the controller's CPU and memory;
//   - recovery: the time from a host's death being confirmed to all of its HA VMs running elsewhere, with
//     libvirt's test driver standing in for the hypervisors.
//
// It is a measurement, not a test: nothing here asserts a speed. Run it with
//
//	go run ./tests/bench -hosts 100,1000,5000 -window 60s -vms 50 -concurrency 8,16,50 -reps 3
//
// the steady state on the production topology (PostgreSQL and three cluster nodes; VMHA_BIN names a built vmha,
// else it is built) with
//
//	go run ./tests/bench -topology cluster -hosts 100,1000 -window 60s -vms 0
//
// and the payloads of a recovery among many healthy hosts (issue 10) with
//
//	go run ./tests/bench -hosts= -candidates 100,1000 -candidate-vms 40 -vms 50 -concurrency 16 -reps 1
//
// and a mass recovery (20 of 40 hosts die at once with 1,000 HA VMs) with
//
//	go run ./tests/bench -hosts= -mass 40,20,1000 -concurrency 16 -reps 3 -recovery-timeout 10m
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// roleController is the argument that makes this binary the controller child of a steady-state run.
const roleController = "controller"

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		role        = flag.String("role", "", "internal: \"controller\" runs the controller worker child")
		hostsFlag   = flag.String("hosts", "100,1000,5000", "steady state: host counts to measure (empty: skip)")
		window      = flag.Duration("window", 60*time.Second, "steady state: how long to watch once all hosts are healthy")
		settle      = flag.Duration("settle", 5*time.Minute, "steady state: how long to wait for every host to become healthy")
		topo        = flag.String("topology", topologyEmbedded, "steady state: the Temporal measured, embedded (SQLite, in this process) or cluster (3 vmha server nodes on PostgreSQL, mTLS)")
		slots       = flag.Int("activity-slots", 0, "steady state: host watches per controller (0: VMHA_MAX_WATCHES, as vmha runs it)")
		vms         = flag.Int("vms", 50, "recovery: HA VMs on the failed host (0: skip)")
		concurrency = flag.String("concurrency", "8,16,50", "recovery: RECOVERY_CONCURRENCY values to measure")
		reps        = flag.Int("reps", 3, "recovery: repetitions per concurrency")
		candidates  = flag.String("candidates", "", "payloads: healthy stand-in hosts besides the 2 targets, one run per count (empty: skip), e.g. 100,1000")
		candVMs     = flag.Int("candidate-vms", 40, "payloads: VMs each stand-in host runs")
		recTimeout  = flag.Duration("recovery-timeout", 5*time.Minute, "payloads and mass recovery: how long one recovery may take")
		mass        = flag.String("mass", "", "mass recovery: HOSTS,DEAD,VMS, e.g. 40,20,1000 (empty: skip); -reps runs, the first -concurrency")
		verbose     = flag.Bool("v", false, "log progress at debug level")
	)
	flag.Parse()
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *role == roleController {
		return runControllerChild(ctx, *slots, logger)
	}
	if *topo != topologyEmbedded && *topo != topologyCluster {
		return fmt.Errorf("-topology %q: want %s or %s", *topo, topologyEmbedded, topologyCluster)
	}
	hosts, err := ints(*hostsFlag)
	if err != nil {
		return fmt.Errorf("-hosts: %w", err)
	}
	concs, err := ints(*concurrency)
	if err != nil {
		return fmt.Errorf("-concurrency: %w", err)
	}
	cands, err := ints(*candidates)
	if err != nil {
		return fmt.Errorf("-candidates: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for the controller child: %w", err)
	}

	out := os.Stdout
	fmt.Fprintf(out, "Machine: %d CPUs, %s, %s/%s. Command: %s\n\n", runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH,
		strings.Join(os.Args[1:], " "))
	if len(hosts) > 0 {
		var rows []steadyRow
		for _, n := range hosts {
			logger.Info("steady state", "hosts", n, "window", *window)
			row, err := runSteady(ctx, steadyConfig{Topology: *topo, Hosts: n, Window: *window, Settle: *settle, Slots: *slots, Exe: exe}, logger)
			if err != nil {
				return fmt.Errorf("steady state with %d hosts: %w", n, err)
			}
			rows = append(rows, row)
		}
		printSteady(out, rows, *window)
	}
	if *mass != "" {
		m, err := ints(*mass)
		if err != nil || len(m) != 3 || m[1] >= m[0] || len(concs) == 0 {
			return fmt.Errorf("-mass %q: want HOSTS,DEAD,VMS with fewer dead hosts than hosts (and a -concurrency)", *mass)
		}
		cfg := massConfig{Hosts: m[0], Dead: m[1], VMs: m[2], Concurrency: concs[0], Reps: *reps, Timeout: *recTimeout}
		logger.Info("mass recovery", "hosts", cfg.Hosts, "dead", cfg.Dead, "vms", cfg.VMs, "concurrency", cfg.Concurrency, "reps", cfg.Reps)
		rows, err := runMass(ctx, cfg, logger)
		printMass(out, rows, cfg)
		if err != nil {
			return fmt.Errorf("mass recovery: %w", err)
		}
		return nil
	}
	if len(cands) > 0 && *vms > 0 && len(concs) > 0 {
		var rows []payloadRow
		for _, n := range cands {
			logger.Info("payloads", "candidates", n, "vms", *vms, "concurrency", concs[0], "reps", *reps)
			got, err := runPayload(ctx, payloadConfig{Candidates: n, CandidateVMs: *candVMs, VMs: *vms, Concurrency: concs[0],
				Reps: *reps, Timeout: *recTimeout}, logger)
			rows = append(rows, got...)
			if err != nil {
				printPayload(out, rows)
				return fmt.Errorf("payloads with %d candidate hosts: %w", n, err)
			}
		}
		printPayload(out, rows)
		return nil
	}
	if *vms > 0 && len(concs) > 0 {
		logger.Info("recovery", "vms", *vms, "concurrency", concs, "reps", *reps)
		rows, err := runRecovery(ctx, recoveryConfig{VMs: *vms, Concurrency: concs, Reps: *reps}, logger)
		if err != nil {
			return fmt.Errorf("recovery: %w", err)
		}
		printRecovery(out, rows, *vms)
	}
	return nil
}

func ints(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// memTotal reads the machine's memory for the table's caption.
func memTotal() string {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return "memory unknown"
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 4096))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kib, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return fmt.Sprintf("%.1f GiB RAM", kib/1024/1024)
		}
	}
	return "memory unknown"
}
