package topology

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/server/api/adminservice/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Node is one `vmha server` process, a node of the cluster.
type Node struct {
	IP, Address string
	Cmd         *exec.Cmd
	Log         string
	Exited      chan struct{}
	// TLS is how the test's clients dial it, AdminTLS how it reads cluster membership; nil: plain gRPC.
	TLS, AdminTLS *tls.Config
	// StartedAt is when the process was started, ReadyAt when it said its frontend serves.
	StartedAt, ReadyAt time.Time
}

// StartNode starts `vmha server` listening on ip with env on top of the basic settings (VMHA_PERSISTENCE and what
// goes with it, TLS, a controller). No VMHA_* variable of the test's own environment reaches it. The node is stopped
// at cleanup, its log printed when the test failed.
func StartNode(t TB, bin, ip string, frontendPort int, env []string) *Node {
	t.Helper()
	n := &Node{IP: ip, Address: net.JoinHostPort(ip, strconv.Itoa(frontendPort)), Exited: make(chan struct{})}
	n.Log = filepath.Join(t.TempDir(), "node-"+ip+".log")
	out, err := os.Create(n.Log)
	if err != nil {
		t.Fatal(err)
	}
	n.Cmd = exec.Command(bin, "server")
	n.Cmd.Env = append(append(WithoutVMHA(os.Environ()),
		"VMHA_TEMPORAL_ADDRESS="+n.Address,
		"VMHA_UI_PORT=0",
		"VMHA_EMBEDDED_CONTROLLER=false",
		"VMHA_LOG_LEVEL=warn",
	), env...)
	n.Cmd.Stdout, n.Cmd.Stderr = out, out
	n.StartedAt = time.Now()
	if err := n.Cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", ip, err)
	}
	go func() {
		_ = n.Cmd.Wait()
		_ = out.Close()
		close(n.Exited)
	}()
	t.Cleanup(func() {
		n.Stop()
		if t.Failed() {
			text, _ := os.ReadFile(n.Log)
			t.Logf("log of node %s (tail):\n%s", ip, tail(string(text), 60))
		}
	})
	return n
}

// WaitReady waits until the node says its frontend serves (vmha server prints it once the namespace is served).
func (n *Node) WaitReady(t TB, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		text, _ := os.ReadFile(n.Log)
		if strings.Contains(string(text), "Temporal frontend: "+n.Address) {
			n.ReadyAt = time.Now()
			return
		}
		select {
		case <-n.Exited:
			t.Fatalf("node %s exited before serving (%v):\n%s", n.IP, n.Cmd.ProcessState, text)
		case <-deadline:
			t.Fatalf("node %s not serving within %s:\n%s", n.IP, timeout, text)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Kill ends the node at once (SIGKILL), as a crash or a power loss would, and waits for it to be gone.
func (n *Node) Kill(t TB) {
	t.Helper()
	if err := n.Cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL node %s: %v", n.IP, err)
	}
	<-n.Exited
}

// Stop ends the node as systemd would: SIGTERM, then SIGKILL after a grace period.
func (n *Node) Stop() {
	select {
	case <-n.Exited:
		return
	default:
	}
	_ = n.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.Exited:
	case <-time.After(20 * time.Second):
		_ = n.Cmd.Process.Kill()
		<-n.Exited
	}
}

// Admin is a connection to the node's admin service, as the node itself (AdminTLS).
func (n *Node) Admin(t TB) adminservice.AdminServiceClient {
	t.Helper()
	creds := insecure.NewCredentials()
	if n.AdminTLS != nil {
		creds = credentials.NewTLS(n.AdminTLS)
	}
	conn, err := grpc.NewClient(n.Address, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatalf("connect to %s: %v", n.Address, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return adminservice.NewAdminServiceClient(conn)
}

// WaitMembers waits until every ring of the cluster (frontend, history, matching, worker) has exactly the nodes on
// ips, as node n describes the cluster.
func WaitMembers(ctx context.Context, t TB, n *Node, ips []string) {
	t.Helper()
	admin := n.Admin(t)
	want := slices.Clone(ips)
	slices.Sort(want)
	var last string
	for {
		resp, err := admin.DescribeCluster(ctx, &adminservice.DescribeClusterRequest{})
		if err == nil {
			rings := resp.GetMembershipInfo().GetRings()
			ok := len(rings) == 4
			var desc []string
			for _, ring := range rings {
				var hosts []string
				for _, m := range ring.GetMembers() {
					host, _, _ := net.SplitHostPort(m.GetIdentity())
					hosts = append(hosts, host)
				}
				slices.Sort(hosts)
				ok = ok && slices.Equal(hosts, want)
				desc = append(desc, fmt.Sprintf("%s: %v", ring.GetRole(), hosts))
			}
			last = strings.Join(desc, "; ")
			if ok {
				t.Logf("membership seen by %s: %s", n.Address, last)
				return
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("cluster membership seen by %s never became %v in every ring: %s", n.Address, want, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// WithoutVMHA is env without its VMHA_* settings.
func WithoutVMHA(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, "VMHA_") })
}

// VMHABinary is $VMHA_BIN (make test sets it) or a fresh build.
func VMHABinary(t TB) string {
	t.Helper()
	if bin := os.Getenv("VMHA_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "vmha")
	if out, err := exec.Command("go", "build", "-o", bin, "vmha").CombinedOutput(); err != nil {
		t.Fatalf("go build vmha: %v\n%s", err, out)
	}
	return bin
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
