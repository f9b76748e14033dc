// Package heartbeat is the storage heartbeat of issue 7: each hypervisor worker renews its own file on the share,
// <share>/vmha/heartbeats/<host>.json (a types.Heartbeat), every interval (Writer), and the controller reads it for
// every host it watches (Reader). A host whose network is down but whose heartbeat still changes is isolated, still
// writing its disks; one whose heartbeat stopped cannot write the share either.
//
// The Writer also pets the host's watchdog (activities/watchdog) after each successful renewal and only then, so a
// host that cannot renew its heartbeat is taken down by its watchdog within the watchdog's timeout: the self-fencing
// guarantee the heartbeat announces (types.Heartbeat.Watchdog).
//
// Like the catalog, every filesystem call runs bounded by the share timeout (activities.Bounded: a hung NFS mount
// blocks in the kernel), first checks the share's marker (catalog.CheckMarker: an empty mount point must not look
// like a share), and creates no directory: the heartbeats directory is made by `vmha share init` (catalog.Init).
package heartbeat

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/watchdog"
	"vmha/types"
)

// DefaultInterval is how often a worker renews its heartbeat (VMHA_HEARTBEAT_INTERVAL).
const DefaultInterval = 500 * time.Millisecond

// Path is host's heartbeat file under the share mounted at root. host must be types.ValidName.
func Path(root, host string) string { return filepath.Join(catalog.HeartbeatsDir(root), host+".json") }

// ErrHung is wrapped when a previous call on the same file has not returned yet: the share hangs, and no second
// goroutine is left blocked behind the first.
var ErrHung = errors.New("a previous call is still blocked in the filesystem")

// Writer renews one host's heartbeat and pets its watchdog. Set the fields, then call Run (or Renew).
type Writer struct {
	// Root is the share's mount point.
	Root string
	Host string
	// Interval between renewals; DefaultInterval when zero.
	Interval time.Duration
	// Timeout bounds each renewal (VMHA_SHARE_TIMEOUT). Zero: only ctx bounds it.
	Timeout time.Duration
	// Watchdog, armed by the caller, is petted after each successful renewal. Nil: none (Armed=false).
	Watchdog watchdog.Watchdog
	// Arm, if set, is called once by Run, right after the first successful renewal, and its result becomes
	// Watchdog (nil: arming failed, run without). Arming only once the share answers keeps a host that boots
	// without its share (a failed nofail mount, an NFS server down) out of a reset loop, and costs nothing: a
	// heartbeat says "armed" only once the watchdog is, and a worker that died armed left its watchdog running.
	Arm func() watchdog.Watchdog
	// Stats, if set, gives the host's latest stats for each renewal to carry (nil: none yet). It must not block: a
	// renewal is the host's proof of life.
	Stats  func() *types.HostStats
	Logger *slog.Logger

	// busy is set while a renewal runs in the filesystem, including one Bounded gave up on.
	busy atomic.Bool
	// counter and loaded belong to the renewal that holds busy.
	counter uint64
	loaded  bool

	// failing is the kind of the last renewal's failure ("" after a success), petFailing the pet's: each change
	// is logged once.
	failing    string
	petFailing bool
	renewed    bool
	// PetWithin bounds a renewal's start to the pet that follows it (default 1 s, see defaultPetWithin).
	PetWithin time.Duration
}

func (w *Writer) interval() time.Duration {
	if w.Interval > 0 {
		return w.Interval
	}
	return DefaultInterval
}

func (w *Writer) watchdogState() types.WatchdogState {
	if w.Watchdog == nil {
		return types.WatchdogState{}
	}
	return w.Watchdog.State()
}

// Renew writes the next heartbeat once, atomically (a temporary file in the same directory, fsync, rename: a
// reader on any host sees the old file or the new one, never a partial one), with the watchdog's current state.
// It does not pet the watchdog: Run does, after a successful Renew.
func (w *Writer) Renew(ctx context.Context) (types.Heartbeat, error) {
	return w.renew(ctx, w.watchdogState())
}

func (w *Writer) renew(ctx context.Context, wd types.WatchdogState) (types.Heartbeat, error) {
	if !types.ValidName(w.Host) {
		return types.Heartbeat{}, fmt.Errorf("heartbeat: invalid host name %q", w.Host)
	}
	path := Path(w.Root, w.Host)
	what := "renew heartbeat " + path
	if !w.busy.CompareAndSwap(false, true) {
		return types.Heartbeat{}, fmt.Errorf("%s: %w", what, ErrHung)
	}
	hb := types.Heartbeat{Host: w.Host, At: time.Now().UTC(), Interval: w.interval(), Watchdog: wd}
	if w.Stats != nil {
		hb.Stats = w.Stats()
	}
	return activities.Bounded(ctx, w.Timeout, what, func() (types.Heartbeat, error) {
		defer w.busy.Store(false)
		if _, err := catalog.CheckMarker(w.Root); err != nil {
			return types.Heartbeat{}, err
		}
		dir := catalog.HeartbeatsDir(w.Root)
		if info, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return types.Heartbeat{}, fmt.Errorf("no heartbeats directory %s on this share (prepared by an older vmha): "+
				"run `vmha share init` again, once, on any host (it is idempotent, keeps the share's identity and adds it)", dir)
		} else if err != nil {
			return types.Heartbeat{}, err
		} else if !info.IsDir() {
			return types.Heartbeat{}, fmt.Errorf("%s is not a directory", dir)
		}
		if !w.loaded {
			// Go on from the counter on the share, so that a restarted worker never writes a value a reader saw
			// before and takes for "unchanged".
			if old, err := readFile(path, w.Host); err == nil && old.Counter > w.counter {
				w.counter = old.Counter
			}
			w.loaded = true
		}
		w.counter++
		hb.Counter = w.counter
		data, err := json.Marshal(hb)
		if err != nil {
			return types.Heartbeat{}, err
		}
		return hb, writeAtomic(dir, path, append(data, '\n'))
	})
}

// writeAtomic replaces path with data through a temporary file of the same directory. The directory itself is
// not fsynced: the rename is what makes the new heartbeat visible to other hosts (on NFS it is a synchronous
// operation on the server), and a heartbeat lost in a server crash is only an old heartbeat, which its next
// renewal replaces; the file's fsync is what matters, so that no reader ever sees the new name with data not yet
// on the server.
func writeAtomic(dir, path string, data []byte) error {
	tmp, err := catalog.WriteTemp(dir, path, data, 0o600)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// Run renews every Interval until ctx ends, petting the watchdog after each successful renewal and never after a
// failed or hung one. On a clean stop (ctx ended) with an armed watchdog it first writes one last heartbeat that
// says the watchdog is off, then disarms it (the magic close), so that stopping or restarting the worker neither
// resets the host nor leaves a heartbeat on the share promising a self-fencing that no longer exists (a controller
// could otherwise recover the VMs of a host that still runs them). When that last heartbeat cannot be written
// (the share is lost or hangs), the promise on the share still stands, so the watchdog is left running instead
// (Abandon): the host is taken down at its timeout unless a worker arms and pets it again before.
func (w *Writer) Run(ctx context.Context) {
	t := time.NewTicker(w.interval())
	defer t.Stop()
	w.step(ctx)
	for {
		select {
		case <-ctx.Done():
			w.stop()
			return
		case <-t.C:
			w.step(ctx)
		}
	}
}

// defaultPetWithin bounds the time from a renewal's start to the pet that follows it. A controller counts an armed host
// as self-fenced its watchdog's timeout plus VMHA_HEARTBEAT_STOPPED_AFTER (2 s by default) after it saw the last
// renewal; a pet later than that renewal by more than the margin would push the real reset past that moment. So a
// renewal slower than this, or a worker stalled between renewal and pet, does not pet.
const defaultPetWithin = time.Second

// step is one renewal, the pet that follows a success, and their logs.
func (w *Writer) step(ctx context.Context) {
	began := time.Now()
	hb, err := w.Renew(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		kind := failureKind(err)
		if kind != w.failing {
			w.logger().Error("storage heartbeat not renewed: not petting the watchdog", "kind", kind, "error", err,
				"watchdog", w.watchdogState(), "share", w.Root)
		}
		w.failing = kind
		return
	}
	switch {
	case !w.renewed:
		w.logger().Info("storage heartbeat renewing", "file", Path(w.Root, w.Host), "counter", hb.Counter,
			"interval", hb.Interval, "watchdog", hb.Watchdog)
	case w.failing != "":
		w.logger().Info("storage heartbeat renewed again", "counter", hb.Counter, "was", w.failing)
	}
	w.renewed, w.failing = true, ""
	if w.Arm != nil {
		w.Watchdog, w.Arm = w.Arm(), nil
		// The heartbeat just written says "not armed"; the next one says armed. Arm started the timer.
		return
	}
	if w.Watchdog == nil || !hb.Watchdog.Armed {
		return
	}
	if took, limit := time.Since(began), cmp.Or(w.PetWithin, defaultPetWithin); took > limit {
		w.logger().Warn("storage heartbeat renewed late: watchdog not petted for it", "took", took, "limit", limit)
		return
	}
	if err := w.Watchdog.Pet(); err != nil {
		if !w.petFailing {
			w.logger().Error("watchdog not petted: the host will be reset at its timeout unless a pet succeeds", "error", err,
				"watchdog", hb.Watchdog)
		}
		w.petFailing = true
		return
	}
	if w.petFailing {
		w.logger().Info("watchdog petted again", "watchdog", hb.Watchdog)
	}
	w.petFailing = false
}

// stop ends a clean run: see Run.
func (w *Writer) stop() {
	if w.Watchdog == nil {
		return
	}
	st := w.Watchdog.State()
	if !st.Armed {
		return
	}
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The renewal the stop interrupted (Bounded stops waiting when ctx ends) may still be finishing: let it, within
	// the same timeout, rather than fail the last heartbeat with ErrHung.
	for w.busy.Load() && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if _, err := w.renew(ctx, types.WatchdogState{Device: st.Device}); err != nil {
		aerr := w.Watchdog.Abandon()
		w.logger().Error("stopping: could not write the last heartbeat (watchdog off), so the watchdog stays armed: "+
			"the host will be powered off or reset unless a vmha worker arms it again in time", "error", err,
			"watchdog", st, "close_error", aerr)
		return
	}
	if err := w.Watchdog.Disarm(); err != nil {
		w.logger().Error("stopping: watchdog not disarmed: the host may be reset", "error", err, "watchdog", st)
		return
	}
	w.logger().Info("stopping: watchdog disarmed, last heartbeat says so", "watchdog", st)
}

func (w *Writer) logger() *slog.Logger {
	if w.Logger == nil {
		return slog.Default()
	}
	return w.Logger
}

// failureKind groups renewal errors so that a failure is logged once, not at every tick.
func failureKind(err error) string {
	switch {
	case errors.Is(err, activities.ErrShareNotMounted):
		return "share not mounted"
	case errors.Is(err, ErrHung), errors.Is(err, context.DeadlineExceeded):
		return "share hangs"
	default:
		return "write failed"
	}
}

// Reader reads heartbeats for the controller. It implements activities.HeartbeatReader.
type Reader struct {
	root    string
	timeout time.Duration
	// busy holds one *atomic.Bool per host: set while a read of that host's file runs, including one Bounded gave
	// up on, so a hung share leaks at most one goroutine per host however often the controller asks.
	busy sync.Map
}

var _ activities.HeartbeatReader = (*Reader)(nil)

// NewReader reads heartbeats under the share mounted at root; every call gives up after timeout.
func NewReader(root string, timeout time.Duration) *Reader {
	return &Reader{root: root, timeout: timeout}
}

// ReadHeartbeat reads host's last heartbeat. A host that never wrote one is an error wrapping
// activities.ErrNotFound; without the share's marker, one wrapping activities.ErrShareNotMounted.
func (r *Reader) ReadHeartbeat(ctx context.Context, host string) (types.Heartbeat, error) {
	if !types.ValidName(host) {
		return types.Heartbeat{}, fmt.Errorf("heartbeat of %q: not a valid host name", host)
	}
	path := Path(r.root, host)
	what := "read heartbeat " + path
	v, _ := r.busy.LoadOrStore(host, new(atomic.Bool))
	busy := v.(*atomic.Bool)
	if !busy.CompareAndSwap(false, true) {
		return types.Heartbeat{}, fmt.Errorf("%s: %w", what, ErrHung)
	}
	return activities.Bounded(ctx, r.timeout, what, func() (types.Heartbeat, error) {
		defer busy.Store(false)
		if _, err := catalog.CheckMarker(r.root); err != nil {
			return types.Heartbeat{}, err
		}
		hb, err := readFile(path, host)
		if errors.Is(err, activities.ErrNotFound) {
			if _, derr := os.Stat(catalog.HeartbeatsDir(r.root)); errors.Is(derr, fs.ErrNotExist) {
				return hb, fmt.Errorf("%w: no heartbeats directory on this share: run `vmha share init` again to add it", err)
			}
		}
		return hb, err
	})
}

// readFile opens, reads and closes the file every time, never keeping it open or caching it: on NFS, a fresh
// open revalidates the client's cached attributes with the server (close-to-open consistency), so the read sees
// the latest renewal another host's close (or rename) published, not a copy cached for up to acregmax seconds.
// The writer replaces the file by rename, so each open finds the new inode.
func readFile(path, host string) (types.Heartbeat, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return types.Heartbeat{}, fmt.Errorf("%w: no heartbeat %s (the host's worker never wrote one here)", activities.ErrNotFound, path)
	}
	if err != nil {
		return types.Heartbeat{}, err
	}
	var hb types.Heartbeat
	if err := json.Unmarshal(data, &hb); err != nil {
		return types.Heartbeat{}, fmt.Errorf("heartbeat %s: %w", path, err)
	}
	if hb.Host != host {
		return types.Heartbeat{}, fmt.Errorf("heartbeat %s: written for host %q", path, hb.Host)
	}
	return hb, nil
}
