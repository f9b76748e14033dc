package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"

	"vmha/infra/temporalserver"
	"vmha/types"
)

const (
	namespace = "vmha"
	// passwordEnv names the fake BMC password: the controller resolves it before every (fake) power reading.
	passwordEnv = "VMHA_BENCH_BMC_PASSWORD"
)

// server is an embedded Temporal server in a temp dir with a client on it.
type server struct {
	dir    string
	srv    *temporalserver.Server
	client client.Client
}

func startServer(ctx context.Context, logger *slog.Logger) (*server, error) {
	dir, err := os.MkdirTemp("", "vmha-bench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	srv, err := temporalserver.Start(ctx, temporalserver.Options{
		DataDir: dir, FrontendPort: port, Namespace: namespace,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	c, err := client.Dial(client.Options{HostPort: srv.FrontendAddress(), Namespace: namespace, Logger: sdkLogger(logger)})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dial %s: %w", srv.FrontendAddress(), err), srv.Stop(), os.RemoveAll(dir))
	}
	return &server{dir: dir, srv: srv, client: c}, nil
}

func (s *server) stop() error {
	s.client.Close()
	return errors.Join(s.srv.Stop(), os.RemoveAll(s.dir))
}

// sdkLogger keeps the SDK's warnings (failed polls, retries) and drops its per-task info lines.
func sdkLogger(logger *slog.Logger) sdklog.Logger {
	return sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).
		With("component", "sdk"))
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// probeTarget is the one TCP listener every simulated host's network probe connects to: it accepts and closes.
type probeTarget struct {
	ln net.Listener
}

func listenProbeTarget() (*probeTarget, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("probe target listener: %w", err)
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
	return &probeTarget{ln: ln}, nil
}

func (p *probeTarget) port() int    { return p.ln.Addr().(*net.TCPAddr).Port }
func (p *probeTarget) close() error { return p.ln.Close() }

// hostSpec is a simulated host: its probe hits the shared listener, its BMC is the controller's fake.
func hostSpec(name string, probePort int) types.HostSpec {
	return types.HostSpec{
		Name: name, Address: "127.0.0.1", ProbePort: probePort, LibvirtURI: "test:///" + name,
		BMC:      types.BMCSpec{Address: "127.0.0.1", Port: 1, User: "bench", PasswordEnv: passwordEnv},
		Capacity: types.Capacity{MemoryMiB: 256 * 1024, VCPUs: 64},
	}
}

// countMonitors counts running monitors in a state through visibility (empty state: all of them).
func countMonitors(ctx context.Context, c client.Client, state types.HostState) (int64, error) {
	q := fmt.Sprintf("WorkflowType = '%s' AND ExecutionStatus = 'Running'", types.HostMonitorWorkflow)
	if state != "" {
		q += fmt.Sprintf(" AND %s = '%s'", types.HostStateAttr.GetName(), state)
	}
	resp, err := c.CountWorkflow(ctx, &workflowservice.CountWorkflowExecutionsRequest{Namespace: namespace, Query: q})
	if err != nil {
		return 0, fmt.Errorf("count monitors (%s): %w", q, err)
	}
	return resp.GetCount(), nil
}

// procSample is a process's CPU time and memory from /proc.
type procSample struct {
	at     time.Time
	cpu    time.Duration // user + system
	rssKiB int64
	hwmKiB int64
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

func sampleProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	// Fields after the command name, which may hold spaces, start after its closing parenthesis.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(fields))
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	s.cpu = time.Duration(utime+stime) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			s.hwmKiB, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return s, nil
}

// cpuPercent is the CPU used between two samples, in percent of one core.
func cpuPercent(a, b procSample) float64 {
	return 100 * (b.cpu - a.cpu).Seconds() / b.at.Sub(a.at).Seconds()
}
