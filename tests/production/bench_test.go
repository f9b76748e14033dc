package production

import (
	"vmha/tests/topology"

	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
)

// TestBenchCluster measures, with VMHA_BENCH_PRODUCTION=N (workflows per topology): how long a cluster node takes to
// serve (three started together on an empty database, then one restarted on the existing one) next to the embedded
// SQLite server, and the time for N echo workflows (a workflow task, an activity, a second workflow task) to
// complete one after the other, started through one node with the worker on another, next to the embedded server.
// docs/production.md has the numbers.
func TestBenchCluster(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("VMHA_BENCH_PRODUCTION"))
	if n < 1 {
		t.Skip("VMHA_BENCH_PRODUCTION=N (workflows per topology) runs this benchmark")
	}
	pg := topology.StartPostgres(t)
	bin := topology.VMHABinary(t)
	port := topology.FreeFrontendPort(t, append(slices.Clone(nodeIPs), "127.0.0.5"))
	nodes := make([]*topology.Node, len(nodeIPs))
	for i, ip := range nodeIPs {
		nodes[i] = topology.StartNode(t, bin, ip, port, pg.NodeEnv())
	}
	for _, nd := range nodes {
		nd.WaitReady(t, 2*time.Minute)
		t.Logf("cold start (empty database, three nodes at once): node %s serving after %.2f s", nd.IP, nd.ReadyAt.Sub(nd.StartedAt).Seconds())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	topology.WaitMembers(ctx, t, nodes[0], nodeIPs)
	nodes[2].Stop()
	nodes[2] = topology.StartNode(t, bin, nodeIPs[2], port, pg.NodeEnv())
	nodes[2].WaitReady(t, 2*time.Minute)
	t.Logf("restart (existing database, two nodes running): node %s serving after %.2f s", nodes[2].IP, nodes[2].ReadyAt.Sub(nodes[2].StartedAt).Seconds())
	topology.WaitMembers(ctx, t, nodes[0], nodeIPs)

	embedded := topology.StartNode(t, bin, "127.0.0.5", port, []string{"VMHA_PERSISTENCE=sqlite", "VMHA_DATA_DIR=" + t.TempDir()})
	embedded.WaitReady(t, time.Minute)
	t.Logf("embedded SQLite server (new file) serving after %.2f s", embedded.ReadyAt.Sub(embedded.StartedAt).Seconds())

	cluster := latencies(ctx, t, nodes[0].Address, nodes[1].Address, n)
	t.Logf("PostgreSQL connections of the three nodes after the cluster runs: %s", connections(ctx, t, pg))
	single := latencies(ctx, t, embedded.Address, embedded.Address, n)
	t.Logf("%d echo workflows one after the other, start to result:", n)
	t.Logf("  cluster (start on %s, worker on %s): %s", nodes[0].IP, nodes[1].IP, summary(cluster))
	t.Logf("  embedded SQLite server:                     %s", summary(single))
}

// latencies runs n echo workflows one after the other, started through startAt with a worker polling workAt, and
// returns each one's time from start to result.
func latencies(ctx context.Context, t *testing.T, startAt, workAt string, n int) []time.Duration {
	t.Helper()
	starter, err := client.DialContext(ctx, client.Options{HostPort: startAt, Namespace: namespace, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer starter.Close()
	wc, err := client.DialContext(ctx, client.Options{HostPort: workAt, Namespace: namespace, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	w := worker.New(wc, taskQueue, worker.Options{})
	w.RegisterWorkflow(echoWorkflow)
	w.RegisterActivity(echoActivity)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// A first workflow warms connections and caches up; it is not counted.
	var out []time.Duration
	for i := -1; i < n; i++ {
		began := time.Now()
		run, err := starter.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: fmt.Sprintf("bench-%s-%d", startAt, i), TaskQueue: taskQueue,
		}, echoWorkflow, "bench", time.Duration(0))
		if err == nil {
			err = run.Get(ctx, nil)
		}
		if err != nil {
			t.Fatalf("echo workflow %d through %s: %v", i, startAt, err)
		}
		if i >= 0 {
			out = append(out, time.Since(began))
		}
	}
	return out
}

func summary(d []time.Duration) string {
	s := slices.Clone(d)
	slices.Sort(s)
	ms := func(x time.Duration) float64 { return float64(x.Microseconds()) / 1000 }
	return fmt.Sprintf("min %.1f ms, median %.1f ms, p95 %.1f ms, max %.1f ms",
		ms(s[0]), ms(s[len(s)/2]), ms(s[(len(s)*95)/100]), ms(s[len(s)-1]))
}

// connections counts the sessions open on Temporal's two databases, per database.
func connections(ctx context.Context, t *testing.T, pg topology.Postgres) string {
	t.Helper()
	password, err := os.ReadFile(pg.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	u := url.URL{Scheme: "postgres", Host: pg.Address, Path: "/postgres", User: url.UserPassword(pg.User, strings.TrimSpace(string(password))),
		RawQuery: "sslmode=disable"}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatalf("connect to postgres: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT datname, count(*) FROM pg_stat_activity WHERE datname LIKE 'temporal%' GROUP BY datname ORDER BY datname")
	if err != nil {
		t.Fatalf("count connections: %v", err)
	}
	var parts []string
	for rows.Next() {
		var db string
		var count int
		if err := rows.Scan(&db, &count); err != nil {
			t.Fatal(err)
		}
		parts = append(parts, fmt.Sprintf("%s %d", db, count))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(parts, ", ")
}
