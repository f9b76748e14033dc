package heartbeat

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"vmha/activities/catalog"
)

// benchShare is a prepared share in VMHA_HEARTBEAT_MEASURE_DIR (a directory on the filesystem to measure), or in
// the test's temporary directory.
func benchShare(tb testing.TB) string {
	tb.Helper()
	parent := os.Getenv("VMHA_HEARTBEAT_MEASURE_DIR")
	var root string
	if parent == "" {
		root = tb.TempDir()
	} else {
		var err error
		if root, err = os.MkdirTemp(parent, "vmha-heartbeat-bench-"); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { os.RemoveAll(root) })
	}
	if _, _, err := catalog.Init(context.Background(), root, 5*time.Second); err != nil {
		tb.Fatal(err)
	}
	return root
}

// BenchmarkRenew is one renewal: marker check, temp file, write, fsync, close, rename, through activities.Bounded.
func BenchmarkRenew(b *testing.B) {
	w := &Writer{Root: benchShare(b), Host: "hv1", Timeout: 5 * time.Second}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := w.Renew(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead is one read: marker check, open, read, close, decode, through activities.Bounded.
func BenchmarkRead(b *testing.B) {
	root := benchShare(b)
	if _, err := (&Writer{Root: root, Host: "hv1", Timeout: 5 * time.Second}).Renew(context.Background()); err != nil {
		b.Fatal(err)
	}
	r := NewReader(root, 5*time.Second)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := r.ReadHeartbeat(ctx, "hv1"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMeasureRenewal prints the latency distribution of renewals and reads (VMHA_HEARTBEAT_MEASURE=1; where:
// VMHA_HEARTBEAT_MEASURE_DIR, default the temporary directory), as a Markdown table.
func TestMeasureRenewal(t *testing.T) {
	if os.Getenv("VMHA_HEARTBEAT_MEASURE") == "" {
		t.Skip("set VMHA_HEARTBEAT_MEASURE=1 to measure")
	}
	const n = 2000
	root := benchShare(t)
	w := &Writer{Root: root, Host: "hv1", Timeout: 5 * time.Second}
	r := NewReader(root, 5*time.Second)
	ctx := context.Background()
	measure := func(op func() error) []time.Duration {
		d := make([]time.Duration, n)
		for i := range d {
			start := time.Now()
			if err := op(); err != nil {
				t.Fatal(err)
			}
			d[i] = time.Since(start)
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d
	}
	renew := measure(func() error { _, err := w.Renew(ctx); return err })
	read := measure(func() error { _, err := r.ReadHeartbeat(ctx, "hv1"); return err })
	q := func(d []time.Duration, p float64) string {
		return fmt.Sprintf("%.3f", float64(d[int(p*float64(len(d)-1))].Microseconds())/1000)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nheartbeat on %s (%d of each)\n\n", filepath.Dir(root), n)
	fmt.Fprintf(&sb, "| operation | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|\n")
	for _, row := range []struct {
		name string
		d    []time.Duration
	}{{"renew (marker, write, fsync, rename)", renew}, {"read (marker, open, read, close)", read}} {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s |\n", row.name, q(row.d, .5), q(row.d, .9), q(row.d, .99), q(row.d, 1))
	}
	t.Log(sb.String())
}
