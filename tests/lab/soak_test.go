package lab_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"vmha/types"
)

// TestSoak runs the lab with vmha at its default settings for VMHA_SOAK (e.g. 30m, `make soak`) while busy loops
// keep every core of the machine loaded, and counts what the monitors reported: no host may ever be declared dead
// (nothing failed), and the suspect/isolated reports are printed next to those of two probe rules simulated side by
// side on the same hosts under the same load: the one before issue 11 (a miss after 300 ms makes a host suspect,
// three unreachable), the default one, and one with twice its timeout.
func TestSoak(t *testing.T) {
	d, _ := time.ParseDuration(os.Getenv("VMHA_SOAK"))
	if d <= 0 {
		t.Skip("set VMHA_SOAK=30m (make soak) to run")
	}
	w := setUp(t)
	hosts := w.lab.Hosts()
	start := time.Now()
	stopHog := cpuHog(t, runtime.NumCPU())
	defer stopHog()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	rules := []probeRule{
		{name: "before (probe every 250 ms, timeout 300 ms; suspect after 1 miss, unreachable after 3)",
			interval: 250 * time.Millisecond, timeout: 300 * time.Millisecond, suspect: 1, unreachable: 3},
		{name: "probe every 100 ms, timeout 100 ms; suspect after 3 misses, unreachable after 8",
			interval: 100 * time.Millisecond, timeout: 100 * time.Millisecond, suspect: 3, unreachable: 8},
		{name: "defaults now (probe every 100 ms, timeout 50 ms; suspect after 3 misses, unreachable after 8)",
			interval: 100 * time.Millisecond, timeout: 50 * time.Millisecond, suspect: 3, unreachable: 8},
	}
	var wg sync.WaitGroup
	for i := range rules {
		for _, h := range hosts {
			addr, err := w.lab.Address(h)
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func(r *probeRule) {
				defer wg.Done()
				r.run(ctx, net.JoinHostPort(addr, fmt.Sprint(types.DefaultProbePort)))
			}(&rules[i])
		}
	}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Minute):
			t.Logf("soak: %s of %s", time.Since(start).Round(time.Second), d)
		}
	}
	wg.Wait()
	states := w.hooks.stateCounts(start)
	fmt.Printf("\nvmha lab soak: %s, %d hosts, %d busy loops on %d cores, nothing failed\n\n", d, len(hosts), runtime.NumCPU(), runtime.NumCPU())
	fmt.Println("| what | suspect | unreachable (isolated/hung/unknown) | dead | probes | misses |")
	fmt.Println("|---|---|---|---|---|---|")
	fmt.Printf("| vmha at its defaults: host.state reports | %d | %d | %d | | |\n", states[types.HostSuspect],
		states[types.HostIsolated]+states[types.HostHung]+states[types.HostUnknown], states[types.HostDead])
	for i := range rules {
		r := &rules[i]
		fmt.Printf("| simulated rule, %s | %d | %d | | %d | %d |\n", r.name, r.suspects, r.unreachables, r.probes, r.misses)
	}
	if states[types.HostDead] > 0 {
		t.Errorf("a host was declared dead %d times while nothing failed", states[types.HostDead])
	}
}

// probeRule is a network probe rule run against every host: how often it connects, how long it waits, and after
// how many consecutive misses it would report a host suspect and unreachable. It counts those reports.
type probeRule struct {
	name                                   string
	interval, timeout                      time.Duration
	suspect, unreachable                   int
	mu                                     sync.Mutex
	probes, misses, suspects, unreachables int
}

func (r *probeRule) run(ctx context.Context, addr string) {
	misses := 0
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	for {
		conn, err := net.DialTimeout("tcp", addr, r.timeout)
		if err == nil {
			_ = conn.Close()
			misses = 0
		} else {
			misses++
		}
		r.mu.Lock()
		r.probes++
		if err != nil {
			r.misses++
		}
		if misses == r.suspect {
			r.suspects++
		}
		if misses == r.unreachable {
			r.unreachables++
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// cpuHog keeps n cores busy with shell loops until the returned function is called.
func cpuHog(t *testing.T, n int) func() {
	var cmds []*exec.Cmd
	for i := 0; i < n; i++ {
		cmd := exec.Command("sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	return func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
}

// stateCounts counts the host.state events received since t0 by the state they report.
func (h *webhook) stateCounts(t0 time.Time) map[types.HostState]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := map[types.HostState]int{}
	for _, e := range h.events {
		if e.Kind == types.EventHostState && !e.At.Before(t0) {
			n[e.To]++
		}
	}
	return n
}
