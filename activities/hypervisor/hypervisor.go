// Package hypervisor is vmha's client of one host's libvirt, through libvirt's own Go binding (cgo).
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"

	"vmha/activities"
	"vmha/activities/domainxml"
	"vmha/types"
)

// The node's CPU load is the difference of two samples of its CPU counters, at least cpuSampleGap apart. Stats keeps
// the samples it takes and measures the load since an earlier one at once: the hypervisor worker calls it every 2 s
// for its storage heartbeat (workers.HostStatsCache), so a recovery asking a host for its stats does not wait. A
// sample older than cpuSampleMaxAge is not used; Stats then takes a fresh pair, cpuSampleGap apart.
const (
	cpuSampleGap    = 150 * time.Millisecond
	cpuSampleMaxAge = 10 * time.Second
)

// eventLoop is libvirt's default event implementation. libvirt keeps it per process: it must be registered once,
// before the connections whose events (lifecycle, keepalive, close) it should deliver, and one goroutine runs it
// for all of them. That process-wide state is libvirt's, so a package-level sync.Once mirrors it.
var eventLoop struct {
	once sync.Once
	err  error
}

func startEventLoop() error {
	eventLoop.once.Do(func() {
		if eventLoop.err = libvirt.EventRegisterDefaultImpl(); eventLoop.err != nil {
			return
		}
		go func() {
			for {
				if err := libvirt.EventRunDefaultImpl(); err != nil {
					slog.Error("libvirt event loop", "error", err)
					time.Sleep(time.Second)
				}
			}
		}()
	})
	return eventLoop.err
}

// Libvirt is one host's libvirt. It implements activities.Hypervisor. It is safe for concurrent use (libvirt
// connections are thread-safe). When libvirt reports the connection closed (libvirtd restarted), the next call
// opens a new one; a call that fails on a connection found dead is retried once on a new connection, which is
// safe because every operation is idempotent. If libvirtd is still down, calls fail with the connect error.
type Libvirt struct {
	uri    string
	logger *slog.Logger
	// done is closed by Close, so that watches end.
	done chan struct{}

	mu     sync.Mutex
	sess   *session
	closed bool

	// The two latest samples of the node's CPU counters Stats took, newest first.
	cpuMu      sync.Mutex
	cpuSamples [2]cpuSample
}

// cpuSample is the node's CPU counters at one moment.
type cpuSample struct {
	stats *libvirt.NodeCPUStats
	at    time.Time
}

var _ activities.Hypervisor = (*Libvirt)(nil)

// session is one libvirt connection. users counts the calls and watches on it, so that it is closed only after
// the last one: closing a connection under a running call would free memory the call still uses.
type session struct {
	conn     *libvirt.Connect
	users    sync.WaitGroup
	lost     chan struct{}
	lostOnce sync.Once
}

func (s *session) markLost() { s.lostOnce.Do(func() { close(s.lost) }) }

func (s *session) alive() bool {
	select {
	case <-s.lost:
		return false
	default:
	}
	ok, err := s.conn.IsAlive()
	return err == nil && ok
}

// Open connects to libvirt at uri (qemu:///system on the host itself, test:///default in tests).
func Open(ctx context.Context, uri string, logger *slog.Logger) (*Libvirt, error) {
	if err := startEventLoop(); err != nil {
		return nil, fmt.Errorf("libvirt event loop: %w", err)
	}
	l := &Libvirt{uri: uri, logger: logger, done: make(chan struct{})}
	s, err := l.dial(ctx)
	if err != nil {
		return nil, err
	}
	l.sess = s
	return l, nil
}

// keepCPUSample makes sample the newest of the two kept, unless the newest is less than cpuSampleGap older: kept
// samples stay a gap apart, so callers faster than the gap still find one old enough.
func (l *Libvirt) keepCPUSample(sample cpuSample) {
	l.cpuMu.Lock()
	defer l.cpuMu.Unlock()
	if newest := l.cpuSamples[0]; newest.stats != nil && sample.at.Sub(newest.at) < cpuSampleGap {
		return
	}
	l.cpuSamples[1], l.cpuSamples[0] = l.cpuSamples[0], sample
}

// cpuBaseline is the newest kept sample at least cpuSampleGap and at most cpuSampleMaxAge before now: the one
// taken just now may be too close to measure anything, the one before it then serves.
func (l *Libvirt) cpuBaseline(now time.Time) (cpuSample, bool) {
	l.cpuMu.Lock()
	defer l.cpuMu.Unlock()
	for _, s := range l.cpuSamples {
		if age := now.Sub(s.at); s.stats != nil && age >= cpuSampleGap && age <= cpuSampleMaxAge {
			return s, true
		}
	}
	return cpuSample{}, false
}

// dial opens a connection. NewConnect cannot be cancelled, so it runs aside and a late connection is closed.
func (l *Libvirt) dial(ctx context.Context) (*session, error) {
	type dialed struct {
		conn *libvirt.Connect
		err  error
	}
	ch := make(chan dialed, 1)
	go func() {
		c, err := libvirt.NewConnect(l.uri)
		ch <- dialed{c, err}
	}()
	var d dialed
	select {
	case d = <-ch:
	case <-ctx.Done():
		go func() {
			if d := <-ch; d.conn != nil {
				d.conn.Close()
			}
		}()
		return nil, fmt.Errorf("connect to %s: %w", l.uri, ctx.Err())
	}
	if d.err != nil {
		return nil, fmt.Errorf("connect to %s: %w", l.uri, d.err)
	}
	s := &session{conn: d.conn, lost: make(chan struct{})}
	// Keepalive makes a remote libvirtd that stops answering show up as a closed connection instead of hung calls.
	// Local drivers do not support it, which is fine.
	if err := d.conn.SetKeepAlive(5, 3); err != nil {
		l.logger.Debug("libvirt keepalive not set", "uri", l.uri, "error", err)
	}
	err := d.conn.RegisterCloseCallback(func(_ *libvirt.Connect, reason libvirt.ConnectCloseReason) {
		l.logger.Warn("libvirt connection closed", "uri", l.uri, "reason", reason)
		s.markLost()
	})
	if err != nil {
		l.logger.Debug("libvirt close callback not registered", "uri", l.uri, "error", err)
	}
	return s, nil
}

// acquire returns the live session, opening a new one if the last was lost. The caller must call users.Done.
func (l *Libvirt) acquire(ctx context.Context) (*session, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("libvirt %s: connection closed by vmha", l.uri)
	}
	if l.sess != nil && l.sess.alive() {
		l.sess.users.Add(1)
		return l.sess, nil
	}
	if old := l.sess; old != nil {
		l.logger.Warn("libvirt connection lost, reconnecting", "uri", l.uri)
		l.sess = nil
		go release(old)
	}
	s, err := l.dial(ctx)
	if err != nil {
		return nil, err
	}
	l.sess = s
	s.users.Add(1)
	return s, nil
}

// release closes a session once nobody uses it any more.
func release(s *session) error {
	s.users.Wait()
	s.conn.UnregisterCloseCallback()
	_, err := s.conn.Close()
	return err
}

// do runs f on the connection. libvirt calls cannot be cancelled, so f runs in its own goroutine and the caller
// stops waiting when ctx ends; the call then finishes in the background (on a remote connection keepalive bounds
// it). f must not touch the caller's variables after ctx ended, which holds as callers return at once then.
func (l *Libvirt) do(ctx context.Context, f func(c *libvirt.Connect) error) error {
	for attempt := 0; ; attempt++ {
		s, err := l.acquire(ctx)
		if err != nil {
			return err
		}
		done := make(chan error, 1)
		go func() {
			defer s.users.Done()
			done <- f(s.conn)
		}()
		select {
		case err = <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err == nil || attempt > 0 || s.alive() {
			return err
		}
		l.logger.Warn("libvirt call failed on a lost connection, retrying on a new one", "uri", l.uri, "error", err)
	}
}

// Close closes the connection after the calls in flight; watches end.
func (l *Libvirt) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	s := l.sess
	l.sess = nil
	l.mu.Unlock()
	if s == nil {
		return nil
	}
	if err := release(s); err != nil {
		return fmt.Errorf("close libvirt %s: %w", l.uri, err)
	}
	return nil
}

func hasCode(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == code
}

// lookup finds a domain by UUID; a missing one is activities.ErrNotFound. The caller frees the domain.
func lookup(c *libvirt.Connect, uuid string) (*libvirt.Domain, error) {
	dom, err := c.LookupDomainByUUIDString(uuid)
	if hasCode(err, libvirt.ERR_NO_DOMAIN) {
		return nil, fmt.Errorf("domain %s: %w", uuid, activities.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up domain %s: %w", uuid, err)
	}
	return dom, nil
}

// Define defines (or redefines) a persistent domain and turns its autostart off.
func (l *Libvirt) Define(ctx context.Context, xml string) (string, error) {
	var id string
	err := l.do(ctx, func(c *libvirt.Connect) error {
		// No schema validation: a definition recorded from another host must define here even if it would not pass
		// this libvirt's stricter checks, or its recovery would fail.
		dom, err := c.DomainDefineXML(xml)
		if err != nil {
			return err
		}
		defer dom.Free()
		// An autostarted HA VM would start again on a host that comes back after its VMs were recovered elsewhere.
		if err := dom.SetAutostart(false); err != nil {
			return fmt.Errorf("disable autostart: %w", err)
		}
		id, err = dom.GetUUIDString()
		return err
	})
	if err != nil {
		return "", fmt.Errorf("define domain on %s: %w", l.uri, err)
	}
	return id, nil
}

// Warm has libvirt probe the emulator now (domain capabilities of domainType): a libvirtd that has not probed
// QEMU yet spends about 0.6 s doing it on its first define, which would otherwise be a recovery's first define.
func (l *Libvirt) Warm(ctx context.Context, domainType string) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		if _, err := c.GetDomainCapabilities("", "x86_64", "", domainType, 0); err != nil {
			return fmt.Errorf("domain capabilities of %s on %s: %w", domainType, l.uri, err)
		}
		return nil
	})
}

// Start starts an inactive domain. An active one (running or paused) is left as it is.
func (l *Libvirt) Start(ctx context.Context, uuid string) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		dom, err := lookup(c, uuid)
		if err != nil {
			return err
		}
		defer dom.Free()
		if active, err := dom.IsActive(); err == nil && active {
			return nil
		}
		if err := dom.Create(); err != nil {
			if active, aerr := dom.IsActive(); aerr == nil && active {
				return nil
			}
			return fmt.Errorf("start domain %s: %w", uuid, err)
		}
		return nil
	})
}

// Destroy powers a domain off at once (virsh destroy). A stopped or missing domain is already where Destroy
// would leave it.
func (l *Libvirt) Destroy(ctx context.Context, uuid string) error {
	return l.ifDefined(ctx, uuid, func(dom *libvirt.Domain) error {
		if active, err := dom.IsActive(); err == nil && !active {
			return nil
		}
		if err := dom.Destroy(); err != nil {
			if hasCode(err, libvirt.ERR_NO_DOMAIN) {
				return nil
			}
			if active, aerr := dom.IsActive(); aerr == nil && !active {
				return nil
			}
			return fmt.Errorf("destroy domain %s: %w", uuid, err)
		}
		return nil
	})
}

// ifDefined runs f on the domain; a missing domain is not an error (Destroy and Undefine have nothing to do,
// State reports it not found).
func (l *Libvirt) ifDefined(ctx context.Context, uuid string, f func(*libvirt.Domain) error) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		dom, err := lookup(c, uuid)
		if errors.Is(err, activities.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		defer dom.Free()
		return f(dom)
	})
}

// undefineFlags drop libvirt's own metadata of the domain but keep every data file, NVRAM included.
const undefineFlags = libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
	libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.DOMAIN_UNDEFINE_KEEP_NVRAM

// Undefine removes a domain's persistent definition; a running domain keeps running, transient. A missing
// domain is already undefined.
func (l *Libvirt) Undefine(ctx context.Context, uuid string) error {
	return l.ifDefined(ctx, uuid, func(dom *libvirt.Domain) error {
		err := dom.UndefineFlags(undefineFlags)
		if hasCode(err, libvirt.ERR_INVALID_ARG) {
			// Drivers without checkpoints or NVRAM (the test driver) refuse those flags.
			err = dom.UndefineFlags(libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
		}
		if err != nil && !hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return fmt.Errorf("undefine domain %s: %w", uuid, err)
		}
		return nil
	})
}

// stateOf reduces libvirt's state and reason. A domain in the middle of a live migration is DomainMigrating:
// the incoming copy waits paused (reason migration) until the memory has arrived, the outgoing one is paused for
// the last pass or for post-copy, and in post-copy the destination runs while the source still holds part of
// the memory. Neither side is a stray copy then, and destroying either loses the VM.
func stateOf(s libvirt.DomainState, reason int) types.DomainState {
	switch s {
	case libvirt.DOMAIN_RUNNING:
		switch libvirt.DomainRunningReason(reason) {
		case libvirt.DOMAIN_RUNNING_POSTCOPY, libvirt.DOMAIN_RUNNING_POSTCOPY_FAILED:
			return types.DomainMigrating
		}
		return types.DomainRunning
	case libvirt.DOMAIN_BLOCKED:
		return types.DomainRunning
	case libvirt.DOMAIN_PAUSED:
		switch libvirt.DomainPausedReason(reason) {
		case libvirt.DOMAIN_PAUSED_MIGRATION, libvirt.DOMAIN_PAUSED_POSTCOPY, libvirt.DOMAIN_PAUSED_POSTCOPY_FAILED:
			return types.DomainMigrating
		}
	case libvirt.DOMAIN_SHUTOFF:
		return types.DomainShutoff
	}
	return types.DomainOther
}

// DisableAutostart turns a domain's autostart off and reports whether it was on. A domain without autostart, a
// transient or a missing one has nothing to turn off.
func (l *Libvirt) DisableAutostart(ctx context.Context, uuid string) (bool, error) {
	var wasOn bool
	err := l.ifDefined(ctx, uuid, func(dom *libvirt.Domain) error {
		on, err := dom.GetAutostart()
		if hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("autostart of domain %s: %w", uuid, err)
		}
		if !on {
			return nil
		}
		if err := dom.SetAutostart(false); err != nil && !hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return fmt.Errorf("disable autostart of domain %s: %w", uuid, err)
		}
		wasOn = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("on %s: %w", l.uri, err)
	}
	return wasOn, nil
}

// State reads a domain's state; a missing domain is DomainNotFound, not an error.
func (l *Libvirt) State(ctx context.Context, uuid string) (types.DomainState, error) {
	state := types.DomainNotFound
	err := l.ifDefined(ctx, uuid, func(dom *libvirt.Domain) error {
		s, reason, err := dom.GetState()
		if hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("state of domain %s: %w", uuid, err)
		}
		state = stateOf(s, reason)
		return nil
	})
	if err != nil {
		return "", err
	}
	return state, nil
}

// InactiveXML dumps the persistent definition with secure data. A missing domain is activities.ErrNotFound.
func (l *Libvirt) InactiveXML(ctx context.Context, uuid string) (string, error) {
	var xml string
	err := l.do(ctx, func(c *libvirt.Connect) error {
		dom, err := lookup(c, uuid)
		if err != nil {
			return err
		}
		defer dom.Free()
		xml, err = dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE | libvirt.DOMAIN_XML_SECURE)
		if hasCode(err, libvirt.ERR_NO_DOMAIN) {
			return fmt.Errorf("domain %s: %w", uuid, activities.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("dump domain %s: %w", uuid, err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return xml, nil
}

// Domains lists every domain of the host, persistent or transient, ordered by name.
func (l *Libvirt) Domains(ctx context.Context) ([]activities.Domain, error) {
	var out []activities.Domain
	err := l.do(ctx, func(c *libvirt.Connect) error {
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return fmt.Errorf("list domains: %w", err)
		}
		var errs []error
		for i := range doms {
			d, err := describe(&doms[i])
			doms[i].Free()
			switch {
			case hasCode(err, libvirt.ERR_NO_DOMAIN):
				// Undefined between the list and now.
			case err != nil:
				errs = append(errs, err)
			default:
				out = append(out, d)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func describe(dom *libvirt.Domain) (activities.Domain, error) {
	id, err := dom.GetUUIDString()
	if err != nil {
		return activities.Domain{}, err
	}
	name, err := dom.GetName()
	if err != nil {
		return activities.Domain{}, fmt.Errorf("name of domain %s: %w", id, err)
	}
	s, reason, err := dom.GetState()
	if err != nil {
		return activities.Domain{}, fmt.Errorf("state of domain %s: %w", name, err)
	}
	return activities.Domain{UUID: id, Name: name, State: stateOf(s, reason)}, nil
}

// Stats reads the node's CPU load (since an earlier sample it kept, or two fresh samples cpuSampleGap apart), its
// memory, and sums the active domains.
// Host and SharedStorageOK are the caller's.
func (l *Libvirt) Stats(ctx context.Context) (types.HostStats, error) {
	var st types.HostStats
	var now *libvirt.NodeCPUStats
	err := l.do(ctx, func(c *libvirt.Connect) error {
		var err error
		if now, err = c.GetCPUStats(int(libvirt.NODE_CPU_STATS_ALL_CPUS), 0); err != nil {
			return fmt.Errorf("node CPU stats: %w", err)
		}
		return l.nodeAndDomains(c, &st)
	})
	if err != nil {
		return types.HostStats{}, fmt.Errorf("stats of %s: %w", l.uri, err)
	}
	nowAt := time.Now()
	base, ok := l.cpuBaseline(nowAt)
	l.keepCPUSample(cpuSample{stats: now, at: nowAt})
	if ok {
		st.CPULoad = cpuLoad(base.stats, now)
		st.SampledAt = nowAt.UTC()
		return st, nil
	}
	select {
	case <-ctx.Done():
		return types.HostStats{}, ctx.Err()
	case <-time.After(cpuSampleGap):
	}
	var after *libvirt.NodeCPUStats
	err = l.do(ctx, func(c *libvirt.Connect) error {
		var err error
		after, err = c.GetCPUStats(int(libvirt.NODE_CPU_STATS_ALL_CPUS), 0)
		return err
	})
	if err != nil {
		return types.HostStats{}, fmt.Errorf("node CPU stats of %s: %w", l.uri, err)
	}
	afterAt := time.Now()
	l.keepCPUSample(cpuSample{stats: after, at: afterAt})
	st.CPULoad = cpuLoad(now, after)
	st.SampledAt = afterAt.UTC()
	return st, nil
}

// cpuLoad is the busy fraction of all CPUs between two samples: 1 - idle share of the elapsed CPU time.
func cpuLoad(before, after *libvirt.NodeCPUStats) float64 {
	idle := delta(before.Idle, after.Idle) + delta(before.Iowait, after.Iowait)
	total := idle + delta(before.Kernel, after.Kernel) + delta(before.User, after.User)
	if total <= 0 {
		return 0
	}
	return min(max(1-idle/total, 0), 1)
}

// delta is how far a counter moved; a counter that went back (CPU hot-unplug) counts as not moved.
func delta(before, after uint64) float64 {
	if after < before {
		return 0
	}
	return float64(after - before)
}

func (l *Libvirt) nodeAndDomains(c *libvirt.Connect, st *types.HostStats) error {
	info, err := c.GetNodeInfo()
	if err != nil {
		return fmt.Errorf("node info: %w", err)
	}
	st.CPUs = int(info.Cpus)
	mem, err := c.GetMemoryStats(libvirt.NODE_MEMORY_STATS_ALL_CELLS, 0)
	switch {
	case err == nil && mem.TotalSet && mem.FreeSet:
		// Page cache and buffers are reclaimable for a VM that starts.
		st.MemoryTotalMiB = int64(mem.Total / 1024)
		st.MemoryFreeMiB = int64((mem.Free + mem.Buffers + mem.Cached) / 1024)
	case err == nil || hasCode(err, libvirt.ERR_NO_SUPPORT):
		free, err := c.GetFreeMemory()
		if err != nil {
			return fmt.Errorf("node free memory: %w", err)
		}
		st.MemoryTotalMiB = int64(info.Memory / 1024)
		st.MemoryFreeMiB = int64(free >> 20)
	default:
		return fmt.Errorf("node memory stats: %w", err)
	}
	doms, err := c.ListAllDomains(libvirt.CONNECT_LIST_DOMAINS_ACTIVE)
	if err != nil {
		return fmt.Errorf("list active domains: %w", err)
	}
	groups := map[string]bool{}
	for i := range doms {
		l.addDomain(&doms[i], st, groups)
		doms[i].Free()
	}
	for g := range groups {
		st.AntiAffinityGroups = append(st.AntiAffinityGroups, g)
	}
	sort.Strings(st.AntiAffinityGroups)
	return nil
}

// addDomain adds one active domain to the sums. A domain gone meanwhile or with unreadable metadata is logged
// and skipped: one odd VM must not blind the scheduler to the whole host.
func (l *Libvirt) addDomain(dom *libvirt.Domain, st *types.HostStats, groups map[string]bool) {
	info, err := dom.GetInfo()
	if err != nil {
		l.logger.Warn("domain info for stats", "uri", l.uri, "error", err)
		return
	}
	st.VCPUsAllocated += int(info.NrVirtCpu)
	st.MemoryAllocatedMiB += int64((info.MaxMem + 1023) / 1024)
	if uuid, err := dom.GetUUIDString(); err == nil {
		st.Running = append(st.Running, uuid)
	}
	xml, err := dom.GetXMLDesc(0)
	if err != nil {
		l.logger.Warn("domain XML for stats", "uri", l.uri, "error", err)
		return
	}
	rec, err := domainxml.Parse(xml)
	if err != nil {
		l.logger.Warn("domain XML for stats", "uri", l.uri, "error", err)
		return
	}
	if rec.Policy.Enabled && rec.Policy.Rules.AntiAffinityGroup != "" {
		groups[rec.Policy.Rules.AntiAffinityGroup] = true
	}
}

// eventKind maps a lifecycle event to what the keeper follows. A domain arriving by live migration starts paused
// (STARTED/MIGRATED, reported as started: it is only migrating, and the migration may still fail) and resumes when
// its memory is in (RESUMED/MIGRATED, or RESUMED/POSTCOPY when post-copy begins): only then has it arrived. A
// source whose migration failed also resumes with RESUMED/MIGRATED, and runs here again. A source whose migration
// finished stops with STOPPED/MIGRATED. Other suspend/resume events change nothing the keeper follows.
func eventKind(e *libvirt.DomainEventLifecycle) (activities.DomainEventKind, bool) {
	switch e.Event {
	case libvirt.DOMAIN_EVENT_DEFINED:
		return activities.DomainDefined, true
	case libvirt.DOMAIN_EVENT_UNDEFINED:
		return activities.DomainUndefined, true
	case libvirt.DOMAIN_EVENT_STARTED:
		return activities.DomainStarted, true
	case libvirt.DOMAIN_EVENT_RESUMED:
		switch libvirt.DomainEventResumedDetailType(e.Detail) {
		case libvirt.DOMAIN_EVENT_RESUMED_MIGRATED, libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY:
			return activities.DomainMigratedIn, true
		}
	case libvirt.DOMAIN_EVENT_STOPPED:
		if libvirt.DomainEventStoppedDetailType(e.Detail) == libvirt.DOMAIN_EVENT_STOPPED_MIGRATED {
			return activities.DomainMigratedOut, true
		}
		return activities.DomainStopped, true
	}
	return "", false
}

// eventDetail is libvirt's name of a lifecycle event's detail ("booted", "migrated", ...), for logs.
func eventDetail(e *libvirt.DomainEventLifecycle) string {
	if e.Event == libvirt.DOMAIN_EVENT_RESUMED && libvirt.DomainEventResumedDetailType(e.Detail) == libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY {
		return "post-copy" // the binding's String does not know it
	}
	// The binding names details only in String: `Domain event="started" detail="booted"`.
	_, q, ok := strings.Cut(e.String(), "detail=")
	if d, err := strconv.Unquote(q); ok && err == nil && d != "unknown" {
		return d
	}
	return strconv.Itoa(e.Detail)
}

// WatchDefinitions calls fn for every domain defined, undefined, started, stopped, migrated in or out (see
// eventKind), or whose vmha metadata element changed (virsh metadata with the vmha namespace, live or --config),
// until ctx ends (then it returns nil). It returns an error when the connection is lost or closed: events in
// between would be missed, so the caller should reconcile and watch again. fn runs on the caller's goroutine,
// never on libvirt's event loop, so a slow fn delays no other connection's events; it must return once ctx ends.
func (l *Libvirt) WatchDefinitions(ctx context.Context, fn func(activities.DomainEvent)) error {
	s, err := l.acquire(ctx)
	if err != nil {
		return err
	}
	defer s.users.Done()
	var (
		mu      sync.Mutex
		pending []activities.DomainEvent
		ready   = make(chan struct{}, 1)
	)
	queue := func(d *libvirt.Domain, kind activities.DomainEventKind, detail string) {
		// Both read the domain object libvirt handed over; no call reaches libvirtd from its event loop.
		uuid, err := d.GetUUIDString()
		if err != nil {
			l.logger.Warn("libvirt event without uuid", "uri", l.uri, "kind", kind, "error", err)
			return
		}
		name, _ := d.GetName()
		mu.Lock()
		pending = append(pending, activities.DomainEvent{UUID: uuid, Name: name, Kind: kind, Detail: detail})
		mu.Unlock()
		select {
		case ready <- struct{}{}:
		default:
		}
	}
	id, err := s.conn.DomainEventLifecycleRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
		if kind, ok := eventKind(ev); ok {
			queue(d, kind, eventDetail(ev))
		}
	})
	if err != nil {
		return fmt.Errorf("register lifecycle events on %s: %w", l.uri, err)
	}
	defer l.deregister(s, id, "lifecycle")
	// An operator opts a VM in or out with virsh metadata alone: libvirt reports that as its own event, not as a
	// (re)definition. Only vmha's element matters; title, description and other applications' elements do not.
	mid, err := s.conn.DomainEventMetadataChangeRegister(nil, func(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventMetadataChange) {
		if ev.Type == libvirt.DOMAIN_METADATA_ELEMENT && ev.NSURI == domainxml.Namespace {
			queue(d, activities.DomainMetadataChanged, ev.NSURI)
		}
	})
	if err != nil {
		return fmt.Errorf("register metadata-change events on %s: %w", l.uri, err)
	}
	defer l.deregister(s, mid, "metadata-change")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.done:
			return fmt.Errorf("watch %s: connection closed by vmha", l.uri)
		case <-s.lost:
			return fmt.Errorf("watch %s: libvirt connection lost", l.uri)
		case <-ready:
			mu.Lock()
			batch := pending
			pending = nil
			mu.Unlock()
			for _, e := range batch {
				fn(e)
			}
		}
	}
}

// deregister ends one event registration of a watch; on a lost connection it is gone already.
func (l *Libvirt) deregister(s *session, id int, what string) {
	if err := s.conn.DomainEventDeregister(id); err != nil && s.alive() {
		l.logger.Warn("deregister "+what+" events", "uri", l.uri, "error", err)
	}
}
