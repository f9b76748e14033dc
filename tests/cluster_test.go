// Package tests runs vmha end to end in one process: a real embedded Temporal server, the real controller worker,
// real IPMI BMCs (ipmi_sim) and libvirt's test driver as each host's hypervisor.
package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/interceptor"
	"google.golang.org/protobuf/encoding/protojson"

	"vmha/activities"
	"vmha/activities/bmc/bmctest"
	"vmha/activities/catalog"
	"vmha/activities/domainxml"
	"vmha/activities/hypervisor"
	"vmha/activities/notify"
	"vmha/infra/config"
	"vmha/infra/temporalclient"
	"vmha/infra/temporalserver"
	"vmha/starter"
	"vmha/types"
	"vmha/workers"
)

// Each fake host has nodeCPUs CPUs and nodeMemoryMiB of memory (see testNode).
const (
	nodeCPUs      = 4
	nodeMemoryMiB = 4096
)

// nodeXML is a test driver node of 4 CPUs and nodeMemoryMiB, without domains.
const nodeXML = `<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads><active>4</active></cpu>
  <memory>%d</memory>
</node>
`

const webhookSecret = "integration-secret"

// cluster is one vmha installation: server, controller, three hosts, a webhook receiver.
type cluster struct {
	t        *testing.T
	settings config.Settings
	client   client.Client
	share    string
	image    string
	hosts    map[string]*host
	names    []string
	webhook  *webhook
	logs     *lockedBuffer
	logger   *slog.Logger

	mu             sync.Mutex
	stopController func()
}

// host is one fake hypervisor. Its libvirt connection stands for libvirtd: it outlives the host's worker, as
// libvirtd outlives a crashed vmha worker, and the test reads the host's true domain state through it
// (every connection to a test:///file URI has its own state, so nobody else could see it).
type host struct {
	name string
	spec types.HostSpec
	bmc  *bmctest.Sim
	hv   *hypervisor.Libvirt

	mu     sync.Mutex
	probe  net.Listener
	port   int
	stopFn func()
}

// newCluster starts everything and applies the inventory of hv1..hv3; it returns once every monitor says healthy.
// hostInterceptors, when given, are installed on every host worker's own task queue.
func newCluster(t *testing.T, hostInterceptors ...interceptor.WorkerInterceptor) *cluster {
	t.Helper()
	for _, bin := range []string{"ipmi_sim", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not found: install Debian packages openipmi and qemu-utils to run the integration tests", bin)
		}
	}
	dir := t.TempDir()
	c := &cluster{t: t, share: filepath.Join(dir, "share"), hosts: map[string]*host{}, logs: &lockedBuffer{}}
	c.logger = slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", c.logs.String())
		}
	})
	must(t, os.MkdirAll(filepath.Join(c.share, "images"), 0o755))
	// Prepared as `vmha share init` does: without the marker no host serves the share queue.
	if _, _, err := catalog.Init(context.Background(), c.share, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c.image = filepath.Join(c.share, "images", "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", c.image, "16M").CombinedOutput(); err != nil {
		t.Fatalf("base image: %v: %s", err, out)
	}
	c.webhook = startWebhook(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port := freeTCPPort(t)
	srv, err := temporalserver.Start(ctx, temporalserver.Options{
		DataDir: filepath.Join(dir, "temporal"), FrontendPort: port, Namespace: "vmha",
		Logger: slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		t.Fatalf("start temporal: %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })

	// Settings are the documented defaults, read by envconfig like every vmha role does, with a fast probe.
	for k, v := range map[string]string{
		"VMHA_TEMPORAL_ADDRESS": srv.FrontendAddress(),
		"VMHA_NAMESPACE":        "vmha",
		"VMHA_PROBE_INTERVAL":   "100ms",
		"VMHA_METRICS_ADDR":     "",
		"VMHA_WEBHOOK_URL":      c.webhook.url,
		"VMHA_WEBHOOK_SECRET":   webhookSecret,
		"VMHA_SHARE_PATH":       c.share,
		"VMHA_LOG_LEVEL":        "info",
	} {
		t.Setenv(k, v)
	}
	if c.settings, err = config.Load(); err != nil {
		t.Fatal(err)
	}
	if c.client, err = temporalclient.Dial(ctx, c.settings, c.logger); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.client.Close)

	var inv types.Inventory
	for i := 1; i <= 3; i++ {
		h := c.addHost(fmt.Sprintf("hv%d", i), dir)
		h.startWorker(c, hostInterceptors...)
		inv.Hosts = append(inv.Hosts, h.spec)
	}
	t.Cleanup(func() {
		for _, h := range c.hosts {
			h.stopWorker()
		}
	})
	c.startController()
	t.Cleanup(c.controllerDown)

	res, err := c.starter().Apply(ctx, inv)
	if err != nil {
		t.Fatalf("apply inventory: %v", err)
	}
	if len(res.Added) != 3 {
		t.Fatalf("apply added %v, want hv1..hv3", res.Added)
	}
	for _, name := range c.names {
		c.waitState(name, types.HostHealthy, 30*time.Second)
	}
	return c
}

func (c *cluster) addHost(name, dir string) *host {
	t := c.t
	hostDir := filepath.Join(dir, name)
	must(t, os.MkdirAll(hostDir, 0o700))
	nodeFile := filepath.Join(hostDir, "node.xml")
	must(t, os.WriteFile(nodeFile, []byte(fmt.Sprintf(nodeXML, nodeMemoryMiB*1024)), 0o600))
	sim := bmctest.Start(t, "pw-"+name)
	passwordFile := filepath.Join(hostDir, "bmc-password")
	must(t, os.WriteFile(passwordFile, []byte(sim.Password()+"\n"), 0o600))

	uri := "test://" + nodeFile
	hv, err := hypervisor.Open(context.Background(), uri, c.logger.With("host", name))
	if err != nil {
		t.Skipf("libvirt test driver %s: %v (install libvirt-dev and libvirt-daemon)", uri, err)
	}
	t.Cleanup(func() { _ = hv.Close() })

	h := &host{name: name, bmc: sim, hv: hv}
	h.networkUp(t)
	bmcSpec := sim.Spec()
	bmcSpec.PasswordFile = passwordFile
	h.spec = types.HostSpec{Name: name, Address: "127.0.0.1", ProbePort: h.port, LibvirtURI: uri, BMC: bmcSpec,
		Labels: map[string]string{"rack": "r" + name[len(name)-1:]}}
	c.hosts[name] = h
	c.names = append(c.names, name)
	return h
}

// networkUp opens the host's probe port (the same one again after networkDown) and accepts until it is closed.
func (h *host) networkUp(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	addr := fmt.Sprintf("127.0.0.1:%d", h.port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s probe listener %s: %v", h.name, addr, err)
	}
	h.probe, h.port = ln, ln.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.Close()
		}
	}()
}

// networkDown cuts the host off: probes get connection refused.
func (h *host) networkDown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.probe.Close()
}

// die is a power loss: the BMC reports the chassis off, and the host has no network, no worker and no running
// domain. It may run on any goroutine.
func (h *host) die(t *testing.T) {
	h.bmc.SetPower(false)
	h.networkDown()
	h.stopWorker()
	ctx := context.Background()
	doms, err := h.hv.Domains(ctx)
	if err != nil {
		t.Errorf("%s: list domains: %v", h.name, err)
	}
	for _, d := range doms {
		if err := h.hv.Destroy(ctx, d.UUID); err != nil {
			t.Errorf("%s: power loss of %s: %v", h.name, d.Name, err)
		}
	}
}

// revive powers the host back on: its worker starts (and reconciles the catalog), then its network answers.
func (h *host) revive(c *cluster) {
	h.bmc.SetPower(true)
	h.startWorker(c)
	h.networkUp(c.t)
}

// startWorker serves the host's task queue and the share queue, and runs the catalog keeper, with the workers
// workers.RunHypervisor runs, but on the host's long-lived libvirt connection and with the given interceptors.
func (h *host) startWorker(c *cluster, interceptors ...interceptor.WorkerInterceptor) {
	logger := c.logger.With("host", h.name)
	// A client of its own, as the worker would have in its own process: closing it is the crash.
	tc, err := temporalclient.Dial(context.Background(), c.settings, logger)
	must(c.t, err)
	s := c.settings
	s.HostName, s.SharePath = h.name, c.share
	hw := workers.HypervisorWorkers(tc, s, testNode{Libvirt: h.hv}, logger, interceptors...)
	must(c.t, hw.Start(context.Background()))
	h.mu.Lock()
	h.stopFn = func() {
		// The connection goes first, so that nothing in flight reports anything, as when the process dies.
		tc.Close()
		hw.Stop()
	}
	h.mu.Unlock()
}

// stopWorker stops the host's worker as a crash of the vmha process would: results of activities in flight are
// lost, libvirt and its domains stay.
func (h *host) stopWorker() {
	h.mu.Lock()
	stop := h.stopFn
	h.stopFn = nil
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// testNode reads a host's stats from its domains, since libvirt's test driver cannot: for a node read from a file
// it has no NUMA cells and fails to report free memory, which hypervisor.Libvirt.Stats needs. The sums are what
// Stats computes (running domains' vCPUs, memory and anti-affinity groups) over the node the file declares.
type testNode struct{ *hypervisor.Libvirt }

func (n testNode) Stats(ctx context.Context) (types.HostStats, error) {
	st := types.HostStats{CPUs: nodeCPUs, MemoryTotalMiB: nodeMemoryMiB, SampledAt: time.Now().UTC()}
	doms, err := n.Domains(ctx)
	if err != nil {
		return st, err
	}
	for _, d := range doms {
		if d.State != types.DomainRunning {
			continue
		}
		xml, err := n.InactiveXML(ctx, d.UUID)
		if err != nil {
			return st, err
		}
		rec, err := domainxml.Parse(xml)
		if err != nil {
			return st, fmt.Errorf("stats: domain %s: %w", d.Name, err)
		}
		st.VCPUsAllocated += rec.VCPUs
		st.MemoryAllocatedMiB += rec.MemoryMiB
		if g := rec.Policy.Rules.AntiAffinityGroup; rec.Policy.Enabled && g != "" && !slices.Contains(st.AntiAffinityGroups, g) {
			st.AntiAffinityGroups = append(st.AntiAffinityGroups, g)
		}
	}
	st.MemoryFreeMiB = nodeMemoryMiB - st.MemoryAllocatedMiB
	return st, nil
}

// startController runs the real controller worker (workers.RunController) until controllerDown.
func (c *cluster) startController() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- workers.RunController(ctx, c.settings, c.client, c.logger) }()
	c.mu.Lock()
	c.stopController = func() {
		cancel()
		if err := <-done; err != nil {
			c.t.Errorf("controller: %v", err)
		}
	}
	c.mu.Unlock()
}

func (c *cluster) controllerDown() {
	c.mu.Lock()
	stop := c.stopController
	c.stopController = nil
	c.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (c *cluster) starter() starter.Starter {
	return starter.Starter{Client: c.client, Out: io.Discard}
}

// waitState waits until host's monitor publishes state in its VmhaHostState search attribute.
func (c *cluster) waitState(name string, state types.HostState, within time.Duration) {
	c.t.Helper()
	var last types.HostState
	eventually(c.t, within, func() bool {
		last = c.state(name)
		return last == state
	}, func() string { return fmt.Sprintf("host %s state %q, want %q", name, last, state) })
}

func (c *cluster) state(name string) types.HostState {
	rows, err := c.starter().HostRows(context.Background())
	if err != nil {
		c.t.Fatalf("list hosts: %v", err)
	}
	for _, r := range rows {
		if r.Name == name {
			return r.State
		}
	}
	return ""
}

// defineHA defines an HA VM on a host through libvirt, as an operator's `virsh define` would.
func (c *cluster) defineHA(h *host, name, uuid string, memoryMiB int64, priority int) {
	c.t.Helper()
	xml, err := domainxml.Build(domainxml.Spec{Name: name, UUID: uuid, VCPUs: 1, MemoryMiB: memoryMiB,
		DiskPath: filepath.Join(c.share, name+".qcow2"), DiskFormat: "qcow2", DomainType: "kvm",
		Policy: types.HAPolicy{Enabled: true, Priority: priority}})
	must(c.t, err)
	if _, err := h.hv.Define(context.Background(), xml); err != nil {
		c.t.Fatalf("define %s on %s: %v", name, h.name, err)
	}
	must(c.t, h.hv.Start(context.Background(), uuid))
}

// catalogEntry reads the shared catalog as any host would.
func (c *cluster) catalogEntry(uuid string) (activities.CatalogEntry, error) {
	return catalog.New(c.share, 5*time.Second).Get(context.Background(), uuid)
}

// runningOn lists the hosts whose libvirt runs the domain, and those where it is merely defined.
func (c *cluster) runningOn(uuid string) (running, defined []string) {
	for _, name := range c.names {
		st, err := c.hosts[name].hv.State(context.Background(), uuid)
		must(c.t, err)
		switch st {
		case types.DomainRunning:
			running = append(running, name)
		case types.DomainNotFound:
		default:
			defined = append(defined, name)
		}
	}
	return running, defined
}

// workflows lists the executions matching a visibility query.
func (c *cluster) workflows(query string) []string {
	c.t.Helper()
	resp, err := c.client.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{Query: query, PageSize: 1000})
	if err != nil {
		c.t.Fatalf("list workflows %q: %v", query, err)
	}
	var ids []string
	for _, e := range resp.GetExecutions() {
		ids = append(ids, e.GetExecution().GetWorkflowId())
	}
	return ids
}

// result waits for a workflow's result.
func (c *cluster) result(id string, within time.Duration, v interface{}) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := c.client.GetWorkflow(ctx, id, "").Get(ctx, v); err != nil {
		c.t.Fatalf("result of %s: %v", id, err)
	}
}

// recordHistories writes the histories of the given workflows to workflows/testdata/<file>.json when
// VMHA_RECORD_HISTORIES=1, for workflows/replay_test.go: the current set only, never workflows/testdata/released,
// whose frozen histories of released builds must replay as they were recorded.
func (c *cluster) recordHistories(files map[string]string) {
	c.t.Helper()
	if os.Getenv("VMHA_RECORD_HISTORIES") != "1" {
		return
	}
	dir := filepath.Join("..", "workflows", "testdata")
	must(c.t, os.MkdirAll(dir, 0o755))
	for file, id := range files {
		h := &historypb.History{}
		it := c.client.GetWorkflowHistory(context.Background(), id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			e, err := it.Next()
			if err != nil {
				c.t.Fatalf("history of %s: %v", id, err)
			}
			h.Events = append(h.Events, e)
		}
		out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(h)
		must(c.t, err)
		must(c.t, os.WriteFile(filepath.Join(dir, file+".json"), out, 0o644))
		c.t.Logf("recorded %s (%d events) into %s.json", id, len(h.GetEvents()), file)
	}
}

// webhook receives vmha's events and checks every signature.
type webhook struct {
	url string

	mu     sync.Mutex
	events []types.Event
	forged int
}

func startWebhook(t *testing.T) *webhook {
	w := &webhook{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if notify.Verify(webhookSecret, body, r.Header.Get(notify.SignatureHeader), time.Now(), notify.MaxSignatureAge) != nil {
			w.forged++
			http.Error(rw, "bad signature", http.StatusUnauthorized)
			return
		}
		var e types.Event
		if err := json.Unmarshal(body, &e); err != nil || string(e.Kind) != r.Header.Get(notify.EventHeader) {
			w.forged++
			http.Error(rw, "bad event", http.StatusBadRequest)
			return
		}
		w.events = append(w.events, e)
	}))
	t.Cleanup(srv.Close)
	w.url = srv.URL + "/hooks/vmha"
	return w
}

// received returns the events that match.
func (w *webhook) received(match func(types.Event) bool) []types.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []types.Event
	for _, e := range w.events {
		if match(e) {
			out = append(out, e)
		}
	}
	return out
}

func (w *webhook) forgeries() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.forged
}

// eventually polls cond every 100ms until it holds or within passes; what says why it failed.
func eventually(t *testing.T, within time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freeTCPPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer collects logs from many goroutines; they are printed when a test fails.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Clone(b.buf.String())
}
