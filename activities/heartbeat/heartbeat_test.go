package heartbeat

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"vmha/activities"
	"vmha/activities/catalog"
	"vmha/activities/watchdog"
	"vmha/types"
)

type watchdogIface = watchdog.Watchdog

// fakeWatchdog records what the writer does with it.
type fakeWatchdog struct {
	mu                      sync.Mutex
	armed                   bool
	pets, disarms, abandons int
	failPet                 bool
	timeout                 time.Duration
}

func (f *fakeWatchdog) Arm(timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed, f.timeout = true, timeout
	return nil
}

func (f *fakeWatchdog) Pet() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.armed || f.failPet {
		return errors.New("not petted")
	}
	f.pets++
	return nil
}

func (f *fakeWatchdog) Disarm() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed = false
	f.disarms++
	return nil
}

func (f *fakeWatchdog) Abandon() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armed = false
	f.abandons++
	return nil
}

func (f *fakeWatchdog) State() types.WatchdogState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.armed {
		return types.WatchdogState{Device: "fake"}
	}
	return types.WatchdogState{Armed: true, Timeout: f.timeout, Device: "fake"}
}

func (f *fakeWatchdog) counts() (pets, disarms, abandons int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pets, f.disarms, f.abandons
}

func share(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	if _, _, err := catalog.Init(context.Background(), root, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return root
}

// logBuffer collects the writer's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func counter(t *testing.T, r *Reader, host string) uint64 {
	t.Helper()
	hb, err := r.ReadHeartbeat(context.Background(), host)
	if err != nil {
		return 0
	}
	return hb.Counter
}

// TestWriterRenewsPetsAndStops: the counter rises and the watchdog is petted while the marker is there; both stop
// while the marker is gone and resume when it is back; a write that fails (the directory replaced by a file)
// stops both too; a failure is logged once, not at every tick; a clean stop writes a last heartbeat that says the
// watchdog is off, then disarms it.
func TestWriterRenewsPetsAndStops(t *testing.T) {
	root := share(t)
	wd := &fakeWatchdog{}
	if err := wd.Arm(time.Second); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	w := &Writer{Root: root, Host: "hv1", Interval: 10 * time.Millisecond, Timeout: time.Second, Watchdog: wd,
		Logger: slog.New(slog.NewTextHandler(logs, nil))}
	r := NewReader(root, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()

	waitFor(t, "three renewals", func() bool { return counter(t, r, "hv1") >= 3 })
	hb, err := r.ReadHeartbeat(ctx, "hv1")
	if err != nil || hb.Host != "hv1" || hb.Interval != 10*time.Millisecond || !hb.Watchdog.Armed || hb.Watchdog.Timeout != time.Second {
		t.Fatalf("heartbeat %+v, %v", hb, err)
	}
	waitFor(t, "a higher counter", func() bool { return counter(t, r, "hv1") > hb.Counter })
	if pets, _, _ := wd.counts(); pets < 3 {
		t.Fatalf("%d pets after 3 renewals", pets)
	}

	// stalled checks that for 10 intervals neither the file nor the pets change.
	stalled := func(what string) {
		t.Helper()
		// A renewal in flight when the fault came may still land, later on a loaded machine (seen failing under
		// make test's load with a fixed 30 ms): wait until file and pets hold still for 3 intervals (waitFor: at most 5 s).
		// A writer that goes on renewing never holds still, and fails here.
		var data0 []byte
		var pets0 int
		waitFor(t, what+": renewals stop", func() bool {
			data0, _ = os.ReadFile(Path(root, "hv1"))
			pets0, _, _ = wd.counts()
			time.Sleep(30 * time.Millisecond)
			data, _ := os.ReadFile(Path(root, "hv1"))
			pets, _, _ := wd.counts()
			return bytes.Equal(data0, data) && pets == pets0
		})
		time.Sleep(100 * time.Millisecond)
		data1, _ := os.ReadFile(Path(root, "hv1"))
		pets1, _, _ := wd.counts()
		if !bytes.Equal(data0, data1) || pets1 != pets0 {
			t.Fatalf("%s: heartbeat %s -> %s, pets %d -> %d; want no renewal and no pet", what, data0, data1, pets0, pets1)
		}
	}
	resumed := func(what string) {
		t.Helper()
		c0 := counter(t, r, "hv1")
		pets0, _, _ := wd.counts()
		waitFor(t, what+": renewals again", func() bool { return counter(t, r, "hv1") >= c0+3 })
		waitFor(t, what+": pets again", func() bool { p, _, _ := wd.counts(); return p >= pets0+3 })
	}

	// The share's marker disappears (the share is unmounted: the mount point is an empty directory).
	marker := catalog.MarkerPath(root)
	if err := os.Rename(marker, marker+".away"); err != nil {
		t.Fatal(err)
	}
	stalled("marker gone")
	if _, err := r.ReadHeartbeat(ctx, "hv1"); !errors.Is(err, activities.ErrShareNotMounted) {
		t.Fatalf("read without the marker: %v, want ErrShareNotMounted", err)
	}
	if err := os.Rename(marker+".away", marker); err != nil {
		t.Fatal(err)
	}
	resumed("marker back")

	// A write that fails: the heartbeats directory is not a directory any more.
	dir := catalog.HeartbeatsDir(root)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	stalled("write failing")
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	resumed("write works again")

	if n := logs.count("storage heartbeat not renewed"); n != 2 {
		t.Errorf("%d failure logs, want 2 (one per failure, not one per tick):\n%s", n, logs.buf.String())
	}
	if n := logs.count("renewed again"); n != 2 {
		t.Errorf("%d recovery logs, want 2", n)
	}

	cancel()
	<-done
	if _, disarms, abandons := wd.counts(); disarms != 1 || abandons != 0 {
		t.Fatalf("clean stop: %d disarms, %d abandons; want one disarm", disarms, abandons)
	}
	last, err := r.ReadHeartbeat(context.Background(), "hv1")
	if err != nil || last.Watchdog.Armed {
		t.Fatalf("last heartbeat %+v, %v; want one that says the watchdog is off", last, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("heartbeats dir holds %v, want hv1.json only (no temp files)", entries)
	}
}

// TestStopWithoutShareKeepsWatchdog: when the last heartbeat cannot say the watchdog is off, the watchdog is
// left running (Abandon), never disarmed.
func TestStopWithoutShareKeepsWatchdog(t *testing.T) {
	root := share(t)
	wd := &fakeWatchdog{}
	_ = wd.Arm(time.Second)
	w := &Writer{Root: root, Host: "hv1", Interval: 10 * time.Millisecond, Timeout: time.Second, Watchdog: wd,
		Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	r := NewReader(root, time.Second)
	waitFor(t, "a renewal", func() bool { return counter(t, r, "hv1") >= 1 })
	if err := os.Remove(catalog.MarkerPath(root)); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done
	if _, disarms, abandons := wd.counts(); disarms != 0 || abandons != 1 {
		t.Fatalf("stop without the share: %d disarms, %d abandons; want the watchdog left running", disarms, abandons)
	}
}

// TestHungRenewalDoesNotPet: while a renewal is still blocked in the filesystem, the next one fails at once with
// ErrHung and starts no second goroutine, and nothing is petted.
func TestHungRenewalDoesNotPet(t *testing.T) {
	root := share(t)
	wd := &fakeWatchdog{}
	_ = wd.Arm(time.Second)
	w := &Writer{Root: root, Host: "hv1", Timeout: time.Second, Watchdog: wd, Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
	w.busy.Store(true)
	if _, err := w.Renew(context.Background()); !errors.Is(err, ErrHung) {
		t.Fatalf("Renew while hung: %v, want ErrHung", err)
	}
	w.step(context.Background())
	if pets, _, _ := wd.counts(); pets != 0 {
		t.Fatalf("petted %d times while the renewal hangs", pets)
	}
	w.busy.Store(false)
	w.step(context.Background())
	if pets, _, _ := wd.counts(); pets != 1 {
		t.Fatalf("%d pets after a successful renewal, want 1", pets)
	}
}

// TestCounterGoesOnAfterRestart: a new writer (a restarted worker) continues from the counter on the share.
func TestCounterGoesOnAfterRestart(t *testing.T) {
	root := share(t)
	ctx := context.Background()
	w := &Writer{Root: root, Host: "hv1", Timeout: time.Second}
	for range 5 {
		if _, err := w.Renew(ctx); err != nil {
			t.Fatal(err)
		}
	}
	w2 := &Writer{Root: root, Host: "hv1", Timeout: time.Second}
	hb, err := w2.Renew(ctx)
	if err != nil || hb.Counter != 6 || hb.Watchdog.Armed {
		t.Fatalf("restarted writer wrote %+v, %v; want counter 6, no watchdog", hb, err)
	}
}

// TestRenewalCarriesTheLatestStats (issue 11): each renewal carries the stats the worker measured last, and a
// reader gets them back; none measured yet, none carried.
func TestRenewalCarriesTheLatestStats(t *testing.T) {
	root := share(t)
	ctx := context.Background()
	var latest *types.HostStats
	w := &Writer{Root: root, Host: "hv1", Timeout: time.Second, Stats: func() *types.HostStats { return latest }}
	r := NewReader(root, time.Second)
	if _, err := w.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if hb, err := r.ReadHeartbeat(ctx, "hv1"); err != nil || hb.Stats != nil {
		t.Fatalf("heartbeat before any stats: %+v, %v; want none carried", hb, err)
	}
	latest = &types.HostStats{Host: "hv1", CPULoad: 0.25, MemoryFreeMiB: 1024, SharedStorageOK: true, SampledAt: time.Now().UTC().Round(0)}
	if _, err := w.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	hb, err := r.ReadHeartbeat(ctx, "hv1")
	if err != nil || hb.Stats == nil || !reflect.DeepEqual(*hb.Stats, *latest) {
		t.Fatalf("heartbeat after a measurement: %+v, %v; want stats %+v", hb, err, *latest)
	}
}

// TestShareWithoutHeartbeatsDir: a share prepared before heartbeats existed: the writer names `vmha share init`
// and creates nothing; the reader says not found with the same hint; after Init again both work.
func TestShareWithoutHeartbeatsDir(t *testing.T) {
	root := share(t)
	ctx := context.Background()
	if err := os.Remove(catalog.HeartbeatsDir(root)); err != nil {
		t.Fatal(err)
	}
	w := &Writer{Root: root, Host: "hv1", Timeout: time.Second}
	if _, err := w.Renew(ctx); err == nil || !strings.Contains(err.Error(), "vmha share init") {
		t.Fatalf("Renew without the directory: %v, want an error naming `vmha share init`", err)
	}
	if _, err := os.Stat(catalog.HeartbeatsDir(root)); err == nil {
		t.Fatal("the writer created the heartbeats directory")
	}
	r := NewReader(root, time.Second)
	if _, err := r.ReadHeartbeat(ctx, "hv1"); !errors.Is(err, activities.ErrNotFound) || !strings.Contains(err.Error(), "vmha share init") {
		t.Fatalf("read without the directory: %v", err)
	}
	if _, _, err := catalog.Init(ctx, root, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if hb, err := r.ReadHeartbeat(ctx, "hv1"); err != nil || hb.Counter != 1 {
		t.Fatalf("read after init: %+v, %v", hb, err)
	}
}

// TestReader: bad host names are refused before any file name is built; a host that never wrote is ErrNotFound;
// no marker is ErrShareNotMounted; a file written for another host is refused.
func TestReader(t *testing.T) {
	root := share(t)
	ctx := context.Background()
	r := NewReader(root, time.Second)
	for _, host := range []string{"", "../catalog/x", "a/b", "hv1.json/..", strings.Repeat("h", 64)} {
		if _, err := r.ReadHeartbeat(ctx, host); err == nil || !strings.Contains(err.Error(), "not a valid host name") {
			t.Errorf("ReadHeartbeat(%q) = %v, want the name refused", host, err)
		}
	}
	if _, err := r.ReadHeartbeat(ctx, "hv9"); !errors.Is(err, activities.ErrNotFound) {
		t.Errorf("never written: %v, want ErrNotFound", err)
	}
	if err := os.WriteFile(Path(root, "hv2"), []byte(`{"host":"hv3","counter":7}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadHeartbeat(ctx, "hv2"); err == nil || !strings.Contains(err.Error(), "hv3") {
		t.Errorf("a file holding another host's heartbeat: %v", err)
	}
	if err := os.WriteFile(Path(root, "hv2"), []byte(`{"host":"hv2","cou`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadHeartbeat(ctx, "hv2"); err == nil || errors.Is(err, activities.ErrNotFound) {
		t.Errorf("a truncated file: %v, want a read error", err)
	}
	w := &Writer{Root: root, Host: "hv1", Interval: time.Second, Timeout: time.Second}
	want, err := w.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadHeartbeat(ctx, "hv1")
	if err != nil || got.Counter != want.Counter || got.Host != "hv1" || !got.At.Equal(want.At) || got.Interval != time.Second {
		t.Fatalf("read %+v, %v; want %+v", got, err, want)
	}
	if info, err := os.Stat(Path(root, "hv1")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("heartbeat file: %v, %v; want mode 0600", info, err)
	}

	empty := t.TempDir() // a mount point whose share did not mount
	if _, err := NewReader(empty, time.Second).ReadHeartbeat(ctx, "hv1"); !errors.Is(err, activities.ErrShareNotMounted) {
		t.Errorf("read on an empty mount point: %v, want ErrShareNotMounted", err)
	}
	if _, err := (&Writer{Root: empty, Host: "hv1", Timeout: time.Second}).Renew(ctx); !errors.Is(err, activities.ErrShareNotMounted) {
		t.Errorf("renew on an empty mount point: %v, want ErrShareNotMounted", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("calls on an empty mount point created %v", entries)
	}
	if _, err := (&Writer{Root: root, Host: "../x", Timeout: time.Second}).Renew(ctx); err == nil {
		t.Error("a writer with a bad host name renewed")
	}
	if _, err := os.Stat(filepath.Join(catalog.VMHADir(root), "x.json")); err == nil {
		t.Error("a bad host name escaped the heartbeats directory")
	}
}

// TestArmAfterFirstRenewal: with Arm set, nothing is armed while the share is missing; the first successful
// renewal arms the watchdog, and the following heartbeats say so and pet it.
func TestArmAfterFirstRenewal(t *testing.T) {
	root := share(t)
	marker := catalog.MarkerPath(root)
	if err := os.Rename(marker, marker+".away"); err != nil {
		t.Fatal(err)
	}
	wd := &fakeWatchdog{}
	var mu sync.Mutex
	arms := 0
	w := &Writer{Root: root, Host: "hv1", Interval: 10 * time.Millisecond, Timeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil)),
		Arm: func() watchdogIface {
			mu.Lock()
			defer mu.Unlock()
			arms++
			_ = wd.Arm(3 * time.Second)
			return wd
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	if arms != 0 {
		t.Fatalf("armed %d times without the share", arms)
	}
	mu.Unlock()
	if err := os.Rename(marker+".away", marker); err != nil {
		t.Fatal(err)
	}
	r := NewReader(root, time.Second)
	waitFor(t, "an armed heartbeat", func() bool {
		hb, err := r.ReadHeartbeat(context.Background(), "hv1")
		return err == nil && hb.Watchdog.Armed && hb.Watchdog.Timeout == 3*time.Second
	})
	waitFor(t, "pets", func() bool { p, _, _ := wd.counts(); return p >= 2 })
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if _, disarms, _ := wd.counts(); arms != 1 || disarms != 1 {
		t.Fatalf("%d arms, %d disarms; want one each", arms, disarms)
	}
}

// TestStopWaitsForRenewalInFlight: a stop that interrupts a renewal lets it finish (within the share timeout)
// before the last heartbeat, then disarms; a renewal still hung at the timeout leaves the watchdog running.
func TestStopWaitsForRenewalInFlight(t *testing.T) {
	root := share(t)
	for _, c := range []struct {
		name         string
		hangFor      time.Duration
		wantDisarmed bool
	}{{"finishes", 50 * time.Millisecond, true}, {"hangs", time.Hour, false}} {
		t.Run(c.name, func(t *testing.T) {
			wd := &fakeWatchdog{}
			_ = wd.Arm(time.Second)
			w := &Writer{Root: root, Host: "hv1", Timeout: 200 * time.Millisecond, Watchdog: wd,
				Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
			w.busy.Store(true)
			release := time.AfterFunc(c.hangFor, func() { w.busy.Store(false) })
			defer release.Stop()
			w.stop()
			_, disarms, abandons := wd.counts()
			if c.wantDisarmed != (disarms == 1 && abandons == 0) || disarms+abandons != 1 {
				t.Fatalf("%d disarms, %d abandons; want disarmed=%v", disarms, abandons, c.wantDisarmed)
			}
		})
	}
}

// TestLateRenewalDoesNotPet: a renewal that took longer than PetWithin (a slow share, a worker stalled before the
// pet) does not pet: the reset must come no later than the controller counts on.
func TestLateRenewalDoesNotPet(t *testing.T) {
	root := share(t)
	wd := &fakeWatchdog{}
	_ = wd.Arm(time.Second)
	w := &Writer{Root: root, Host: "hv1", Timeout: time.Second, Watchdog: wd, PetWithin: time.Nanosecond,
		Logger: slog.New(slog.NewTextHandler(&logBuffer{}, nil))}
	w.step(context.Background())
	if pets, _, _ := wd.counts(); pets != 0 {
		t.Fatalf("petted %d times after a renewal slower than PetWithin", pets)
	}
	w.PetWithin = 0
	w.step(context.Background())
	if pets, _, _ := wd.counts(); pets != 1 {
		t.Fatalf("%d pets after a prompt renewal, want 1", pets)
	}
}
