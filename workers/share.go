package workers

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultShareCheckInterval is how often a hypervisor worker looks for the share's marker.
const DefaultShareCheckInterval = 5 * time.Second

// ShareSupervisor serves the share task queue only while this host sees the share's marker
// (<share>/vmha/share.json). A host whose NFS mount failed sees an empty local directory at the mount point: if
// it served the share queue it would answer "no VMs" for a dead host's recovery. So the share worker is started
// when the marker is visible and stopped when it is lost, checked at start and every Interval.
type ShareSupervisor struct {
	// Check returns nil while the marker is visible (catalog.Dir.Check, bounded by the share timeout).
	Check func(ctx context.Context) error
	// Start starts a new share worker and returns how to stop it. A stopped Temporal worker cannot be restarted,
	// so every call builds a new one.
	Start func() (stop func(), err error)
	// Regained runs after the marker became visible again, once the share worker serves (the keeper resyncs the
	// catalog: nothing reached it meanwhile). Optional.
	Regained func(ctx context.Context)
	Interval time.Duration
	Logger   *slog.Logger
	// Share is the mount point, for the logs.
	Share string

	mu        sync.Mutex
	stop      func()
	state     shareState
	startFail bool
}

type shareState int

const (
	shareUnknown shareState = iota
	shareVisible
	shareMissing
)

// Serving reports whether the share worker runs.
func (s *ShareSupervisor) Serving() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stop != nil
}

// Run checks every Interval until ctx ends, then stops the share worker.
func (s *ShareSupervisor) Run(ctx context.Context) {
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultShareCheckInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.halt()
			return
		case <-t.C:
			s.Step(ctx)
		}
	}
}

// Step checks the marker once and starts or stops the share worker to match, logging each change once.
func (s *ShareSupervisor) Step(ctx context.Context) {
	err := s.Check(ctx)
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	prev := s.state
	if err != nil {
		s.state = shareMissing
		stop := s.stop
		s.stop = nil
		s.mu.Unlock()
		if stop != nil {
			stop()
		}
		if prev != shareMissing {
			s.Logger.Error("share not mounted on this host (no share marker): not serving the share queue; "+
				"mount the share, or run `vmha share init` once to prepare a new one", "share", s.Share, "error", err)
		}
		return
	}
	if s.stop == nil {
		stop, err := s.Start()
		if err != nil {
			failedBefore := s.startFail
			s.startFail = true
			s.mu.Unlock()
			if !failedBefore {
				s.Logger.Error("share visible but the share worker did not start; retrying", "share", s.Share, "error", err)
			}
			return
		}
		s.stop, s.startFail = stop, false
	}
	s.state = shareVisible
	s.mu.Unlock()
	switch prev {
	case shareUnknown:
		s.Logger.Info("share mounted: serving the share queue", "share", s.Share)
	case shareMissing:
		s.Logger.Info("share visible again: serving the share queue", "share", s.Share)
		if s.Regained != nil {
			s.Regained(ctx)
		}
	}
}

func (s *ShareSupervisor) halt() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
}
