package workers

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"vmha/activities/hypervisor"
)

// TestHostStatsCacheKeepsTheLatest (issue 11): the cache measures in the background and keeps stats that name the
// host and say it sees the share (they travel only in a heartbeat it wrote there); once libvirt fails, it keeps
// none, so no heartbeat carries stale stats of a host that can no longer measure them.
func TestHostStatsCacheKeepsTheLatest(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	hv, err := hypervisor.Open(context.Background(), "test:///default", logger)
	if err != nil {
		t.Fatal(err)
	}
	c := &HostStatsCache{Host: "hv1", Hypervisor: hv, Every: 20 * time.Millisecond, Logger: logger}
	if c.Latest() != nil {
		t.Fatal("stats before any measurement")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "a measurement", func() bool { return c.Latest() != nil })
	if st := c.Latest(); st.Host != "hv1" || !st.SharedStorageOK || st.SampledAt.IsZero() || st.MemoryTotalMiB <= 0 {
		t.Fatalf("measured %+v", *st)
	}
	hv.Close()
	waitFor(t, "the stats dropped after libvirt failed", func() bool { return c.Latest() == nil })
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
