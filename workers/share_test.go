package workers

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"vmha/activities/catalog"
)

// fakeShareWorker counts starts and stops of the share worker.
type fakeShareWorker struct {
	mu             sync.Mutex
	starts, stops  int
	running        bool
	regained       int
	startFailsLeft int
}

func (f *fakeShareWorker) start() (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.startFailsLeft > 0 {
		f.startFailsLeft--
		return nil, os.ErrDeadlineExceeded
	}
	f.starts++
	f.running = true
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.stops++
		f.running = false
	}, nil
}

func (f *fakeShareWorker) counts() (starts, stops, regained int, running bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts, f.stops, f.regained, f.running
}

// lockedLog is a log sink tests read while the supervisor writes.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *lockedLog) count(s string) int {
	return strings.Count(l.String(), s)
}

func supervisor(root string, f *fakeShareWorker, log *lockedLog, interval time.Duration) *ShareSupervisor {
	cat := catalog.New(root, time.Second)
	return &ShareSupervisor{
		Check: func(ctx context.Context) error {
			_, err := cat.Check(ctx)
			return err
		},
		Start: f.start,
		Regained: func(context.Context) {
			f.mu.Lock()
			f.regained++
			f.mu.Unlock()
		},
		Interval: interval,
		Logger:   slog.New(slog.NewTextHandler(log, nil)),
		Share:    root,
	}
}

// TestShareSupervisorSteps: on an empty mount point (a share that did not mount) the share worker is never
// started and the error is logged once; once the marker appears it is started, once; when the marker is lost
// it is stopped, logged once more; when it comes back the worker starts again and the keeper resyncs.
func TestShareSupervisorSteps(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	f := &fakeShareWorker{}
	log := &lockedLog{}
	s := supervisor(root, f, log, time.Hour)
	const missing = "share not mounted on this host"
	for range 3 {
		s.Step(ctx)
	}
	if starts, _, _, _ := f.counts(); starts != 0 || s.Serving() {
		t.Fatalf("share worker started %d times without the share marker", starts)
	}
	if n := log.count(missing); n != 1 || log.count("level=ERROR") != 1 {
		t.Errorf("logged %q %d times (errors: %d), want once:\n%s", missing, n, log.count("level=ERROR"), log)
	}
	if _, err := os.Stat(catalog.VMHADir(root)); err == nil {
		t.Error("the supervisor created vmha's directory on the mount point")
	}

	if _, _, err := catalog.Init(ctx, root, time.Second); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s.Step(ctx)
	}
	// The keeper's reconcile at start failed without the share: it runs again now.
	if starts, stops, regained, running := f.counts(); starts != 1 || stops != 0 || !running || !s.Serving() || regained != 1 {
		t.Fatalf("after the marker appeared: %d starts, %d stops, %d resyncs, running %v; want started once, one resync",
			starts, stops, regained, running)
	}
	if err := os.Rename(catalog.MarkerPath(root), catalog.MarkerPath(root)+".away"); err != nil {
		t.Fatal(err)
	}
	s.Step(ctx)
	s.Step(ctx)
	if starts, stops, _, running := f.counts(); starts != 1 || stops != 1 || running || s.Serving() {
		t.Fatalf("after the marker was lost: %d starts, %d stops, running %v; want stopped", starts, stops, running)
	}
	if n := log.count(missing); n != 2 {
		t.Errorf("logged %q %d times, want once per loss (2)", missing, n)
	}
	if err := os.Rename(catalog.MarkerPath(root)+".away", catalog.MarkerPath(root)); err != nil {
		t.Fatal(err)
	}
	f.startFailsLeft = 2
	for range 4 {
		s.Step(ctx)
	}
	if starts, stops, regained, running := f.counts(); starts != 2 || stops != 1 || !running || regained != 2 {
		t.Fatalf("after the marker came back: %d starts, %d stops, %d resyncs, running %v", starts, stops, regained, running)
	}
	if n := log.count("did not start"); n != 1 {
		t.Errorf("logged a failed start %d times, want once", n)
	}
	if n := log.count("share visible again"); n != 2 {
		t.Errorf("logged the share's return %d times, want once per return (2)", n)
	}
}

// TestShareSupervisorRun: the loop starts the share worker within an interval of the marker appearing, and
// stops it when ctx ends.
func TestShareSupervisorRun(t *testing.T) {
	root := t.TempDir()
	f := &fakeShareWorker{}
	s := supervisor(root, f, &lockedLog{}, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	time.Sleep(100 * time.Millisecond)
	if starts, _, _, _ := f.counts(); starts != 0 {
		t.Fatalf("share worker started %d times without the share marker", starts)
	}
	if _, _, err := catalog.Init(context.Background(), root, time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !s.Serving() {
		if time.Now().After(deadline) {
			t.Fatal("share worker not started 5 s after the marker appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if starts, stops, _, running := f.counts(); starts != 1 || stops != 1 || running {
		t.Fatalf("after ctx ended: %d starts, %d stops, running %v; want stopped", starts, stops, running)
	}
}
