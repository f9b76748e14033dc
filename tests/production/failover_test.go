package production

import (
	"vmha/tests/topology"

	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"

	"vmha/types"
)

// TestPostgresFailover runs two `vmha server` nodes on a PostgreSQL primary with a synchronous standby, both in
// VMHA_POSTGRES_ADDRESS, then stops the primary for good (as a crash: pg_ctl -m immediate) and promotes the standby
// (what Patroni or an operator does): a workflow in flight across the failover completes, a new one completes, and
// every workflow that completed before it is still there with its result. docs/production.md has the times.
//
// First the standby is listed first: a node must skip it (it accepts no writes) until it is promoted, then take it.
// Then the other order, the old primary's address taken after its stop by a listener that never answers, as a hung
// server would: every new connection waits out its connect timeout there before it reaches the new primary.
func TestPostgresFailover(t *testing.T) {
	t.Run("standby listed first, primary stopped", func(t *testing.T) { failover(t, false) })
	t.Run("primary listed first, then unanswered", func(t *testing.T) { failover(t, true) })
}

func failover(t *testing.T, unanswered bool) {
	primary := topology.StartPostgres(t)
	standby := topology.StartStandby(t, primary)
	bin := topology.VMHABinary(t)
	ips := nodeIPs[:2]
	frontendPort := topology.FreeFrontendPort(t, ips)
	address := standby.Address + "," + primary.Address
	if unanswered {
		address = primary.Address + "," + standby.Address
	}
	env := append(primary.NodeEnv(), "VMHA_POSTGRES_ADDRESS="+address)
	nodes := make([]*topology.Node, len(ips))
	for i, ip := range ips {
		nodes[i] = topology.StartNode(t, bin, ip, frontendPort, env)
	}
	for _, n := range nodes {
		n.WaitReady(t, time.Minute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	topology.WaitMembers(ctx, t, nodes[0], ips)

	clients := make([]client.Client, len(nodes))
	for i, n := range nodes {
		c, err := client.DialContext(ctx, client.Options{HostPort: n.Address, Namespace: namespace, Logger: quiet})
		if err != nil {
			t.Fatalf("dial node %s: %v", n.IP, err)
		}
		defer c.Close()
		clients[i] = c
	}
	dnsServer := topology.ServeDNS(t, "127.0.0.1:0", clusterName, ips)
	byName, err := client.DialContext(ctx, client.Options{
		HostPort:  "dns://" + dnsServer + "/" + net.JoinHostPort(clusterName, strconv.Itoa(frontendPort)),
		Namespace: namespace, Logger: quiet,
	})
	if err != nil {
		t.Fatalf("dial the cluster as %s (DNS at %s): %v", clusterName, dnsServer, err)
	}
	defer byName.Close()
	w := worker.New(byName, taskQueue, worker.Options{})
	w.RegisterWorkflow(echoWorkflow)
	w.RegisterActivity(echoActivity)
	if err := w.Start(); err != nil {
		t.Fatalf("start worker on %s: %v", clusterName, err)
	}
	defer w.Stop()

	// Completed right up to the crash: with synchronous replication each of these results was on the standby
	// before Temporal was told it was stored.
	var before []string
	for i := range 5 {
		id := startEcho(ctx, t, clients[i%2], fmt.Sprintf("before %d", i), 0)
		if got, want := echoResult(ctx, t, clients[i%2], id), fmt.Sprintf("echo before %d", i); got != want {
			t.Fatalf("workflow %s: result %q, want %q", id, got, want)
		}
		before = append(before, id)
	}
	inFlight := startEcho(ctx, t, clients[0], "in flight", 3*time.Second)

	primary.Stop(t, "immediate")
	stopped := time.Now()
	if unanswered {
		blackHole(t, primary.Address)
	}
	standby.Promote(t)
	t.Logf("primary %s stopped for good; standby %s promoted %.2f s later", primary.Address, standby.Address, time.Since(stopped).Seconds())

	after := completeAfter(ctx, t, clients[1], "after-failover", stopped)
	t.Logf("first new workflow completed %.2f s after the primary's stop", time.Since(stopped).Seconds())
	if after != "echo after failover" {
		t.Fatalf("workflow after-failover: result %q, want %q", after, "echo after failover")
	}
	if got := echoResult(ctx, t, clients[1], inFlight); got != "echo in flight" {
		t.Fatalf("workflow %s, in flight across the failover: result %q, want %q", inFlight, got, "echo in flight")
	}
	t.Logf("in-flight workflow completed %.2f s after the primary's stop", time.Since(stopped).Seconds())
	for i, id := range before {
		if got, want := echoResult(ctx, t, clients[(i+1)%2], id), fmt.Sprintf("echo before %d", i); got != want {
			t.Errorf("workflow %s, completed before the failover: result %q, want %q", id, got, want)
		}
	}
	// Visibility lives in PostgreSQL too: the lists come from the new primary.
	waitListed(ctx, t, clients[0], before[len(before)-1])
	waitListed(ctx, t, clients[0], inFlight)
}

// blackHole accepts connections on address and never answers on them, until the test ends.
func blackHole(t *testing.T, address string) {
	t.Helper()
	l, err := net.Listen("tcp", address)
	if err != nil {
		t.Fatalf("listen on the old primary's address %s: %v", address, err)
	}
	held := make(chan net.Conn, 1000)
	t.Cleanup(func() {
		_ = l.Close() // ends the accept loop, which then closes held
		for c := range held {
			_ = c.Close()
		}
	})
	go func() {
		defer close(held)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c:
			default:
				_ = c.Close()
			}
		}
	}()
}

// completeAfter starts workflow id (echo "after failover") through c until one run completes, repeating the start
// with the same ID while the database is unreachable (a start whose answer was lost then returns the run it made).
func completeAfter(ctx context.Context, t *testing.T, c client.Client, id string, since time.Time) string {
	t.Helper()
	for attempt := 1; ; attempt++ {
		actx, acancel := context.WithTimeout(ctx, 20*time.Second)
		var out string
		run, err := c.ExecuteWorkflow(actx, client.StartWorkflowOptions{
			ID: id, TaskQueue: taskQueue,
			TypedSearchAttributes: temporal.NewSearchAttributes(types.HostAttr.ValueSet(testHost)),
		}, echoWorkflow, "after failover", time.Duration(0))
		if err == nil {
			err = run.Get(actx, &out)
		}
		acancel()
		if err == nil {
			return out
		}
		if ctx.Err() != nil {
			t.Fatalf("workflow %s not completed within %s of the failover (%d attempts): %v", id,
				time.Since(since).Round(time.Second), attempt, err)
		}
		t.Logf("attempt %d after the failover (%.1f s): %v", attempt, time.Since(since).Seconds(), err)
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
