package workers

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"vmha/activities/catalog"
	"vmha/activities/heartbeat"
	"vmha/infra/config"
)

// runHeartbeat runs HostHeartbeat's writer on a new share until the returned stop is called.
func runHeartbeat(t *testing.T, s config.Settings) (root string, logs *lockedLog, stop func()) {
	t.Helper()
	root = t.TempDir()
	if _, _, err := catalog.Init(context.Background(), root, time.Second); err != nil {
		t.Fatal(err)
	}
	s.SharePath, s.HostName, s.ShareTimeout, s.HeartbeatInterval = root, "hv1", time.Second, 10*time.Millisecond
	logs = &lockedLog{}
	w := HostHeartbeat(s, slog.New(slog.NewTextHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	return root, logs, func() { cancel(); <-done }
}

// TestHostHeartbeatArmsLabWatchdog: with VMHA_WATCHDOG_DEVICE=file:PATH the worker arms the lab watchdog after
// its first renewal, pets it, announces it in the heartbeat, and disarms it on stop.
func TestHostHeartbeatArmsLabWatchdog(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "hv1.watchdog")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	root, _, stop := runHeartbeat(t, config.Settings{WatchdogDevice: "file:" + dev, WatchdogTimeout: 4 * time.Second})
	r := heartbeat.NewReader(root, time.Second)
	waitFor(t, "an armed heartbeat", func() bool {
		hb, err := r.ReadHeartbeat(context.Background(), "hv1")
		return err == nil && hb.Watchdog.Armed && hb.Watchdog.Timeout == 4*time.Second && hb.Watchdog.Device == "file:"+dev
	})
	waitFor(t, "two pets", func() bool {
		data, _ := os.ReadFile(dev)
		return strings.Count(string(data), "pet\n") >= 2
	})
	stop()
	data, _ := os.ReadFile(dev)
	if !strings.HasPrefix(string(data), "arm 4\npet\n") || !strings.HasSuffix(string(data), "pet\ndisarm\n") {
		t.Errorf("lab watchdog got %q, want arm, pets, disarm", data)
	}
	if hb, err := r.ReadHeartbeat(context.Background(), "hv1"); err != nil || hb.Watchdog.Armed {
		t.Errorf("last heartbeat %+v, %v; want armed=false after the stop", hb, err)
	}
}

// TestHostHeartbeatWithoutWatchdog: a watchdog that cannot be armed is logged, and the worker runs on, its
// heartbeats saying armed=false.
func TestHostHeartbeatWithoutWatchdog(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	root, logs, stop := runHeartbeat(t, config.Settings{WatchdogDevice: "file:" + missing, WatchdogTimeout: 4 * time.Second})
	defer stop()
	r := heartbeat.NewReader(root, time.Second)
	waitFor(t, "renewals", func() bool {
		hb, err := r.ReadHeartbeat(context.Background(), "hv1")
		return err == nil && hb.Counter >= 3
	})
	if hb, _ := r.ReadHeartbeat(context.Background(), "hv1"); hb.Watchdog.Armed {
		t.Errorf("heartbeat says armed: %+v", hb)
	}
	if out := logs.String(); strings.Count(out, "watchdog not armed") != 1 {
		t.Errorf("want one error about the watchdog, logs:\n%s", out)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("the worker created the lab watchdog's file")
	}
}
