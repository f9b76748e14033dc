package main

import (
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"testing"

	"vmha/tests/topology"
)

func TestBenchTBRunsCleanupsLastFirstAndRemovesTempDirs(t *testing.T) {
	tb := &benchTB{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var order []int
	dir := tb.TempDir()
	for i := range 3 {
		tb.Cleanup(func() { order = append(order, i) })
	}
	tb.finish()
	if !slices.Equal(order, []int{2, 1, 0}) {
		t.Errorf("cleanups ran in order %v, want [2 1 0]", order)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temp dir %s after finish: %v, want it removed", dir, err)
	}
	tb.finish()
	if len(order) != 3 {
		t.Errorf("a second finish ran cleanups again: %v", order)
	}
}

// TestSamplePostgresSumsItsProcesses runs Debian's PostgreSQL as the cluster bench does and checks that the
// postmaster is found by its port and that its processes' memory and CPU are summed.
func TestSamplePostgresSumsItsProcesses(t *testing.T) {
	pg := topology.StartPostgres(t)
	_, port, _ := net.SplitHostPort(pg.Address)
	postmaster, stats, err := postgresProcs(port)
	if err != nil {
		t.Fatal(err)
	}
	children := 0
	for _, st := range stats {
		if st.ppid == postmaster {
			children++
		}
	}
	// The checkpointer, background writer, WAL writer and the launchers run from the start.
	if children < 3 {
		t.Errorf("postmaster %d has %d children, want the server's background processes", postmaster, children)
	}
	s, err := samplePostgres(port)
	if err != nil {
		t.Fatal(err)
	}
	own, err := sampleProc(postmaster)
	if err != nil {
		t.Fatal(err)
	}
	if s.rssKiB <= own.rssKiB || s.pssKiB <= 0 || s.pssKiB > s.rssKiB {
		t.Errorf("PostgreSQL sample RSS %d KiB, PSS %d KiB; postmaster alone RSS %d KiB: want the sum over its processes", s.rssKiB, s.pssKiB, own.rssKiB)
	}
	if _, err := samplePostgres("1"); err == nil {
		t.Error("samplePostgres found a postmaster on port 1")
	}
}
