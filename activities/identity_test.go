package activities_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"google.golang.org/protobuf/types/known/timestamppb"

	"vmha/activities"
	"vmha/types"
)

func poller(identity string, ago time.Duration) *taskqueuepb.PollerInfo {
	return &taskqueuepb.PollerInfo{Identity: identity, LastAccessTime: timestamppb.New(time.Now().Add(-ago))}
}

func TestHostIdentityRoundTrip(t *testing.T) {
	id := activities.HostIdentity{Host: "hv1", MachineID: "abc123", Addrs: []string{"10.0.0.1", "fd00::1"}, AddrsPartial: true, PID: 42}
	s := id.String()
	if s != "vmha-host hv1 machine=abc123 addr=10.0.0.1,fd00::1,+ pid=42" {
		t.Fatalf("announced %q", s)
	}
	got, ok := activities.ParseHostIdentity(s)
	if !ok || got.Host != "hv1" || got.MachineID != "abc123" || len(got.Addrs) != 2 || !got.AddrsPartial || got.PID != 42 {
		t.Fatalf("parsed %+v %v", got, ok)
	}
	for _, other := range []string{"4242@hv1", "", "vmha-host ", "vmha-host hv1 pid=3"} {
		if _, ok := activities.ParseHostIdentity(other); ok {
			t.Errorf("parsed %q as a host identity", other)
		}
	}
}

// TestJudgeHostPollers: the poller list of a host's queue decides liveness; two machines on one queue, or a
// worker that does not hold the inventory's IP address, is not a live worker, and the verdict names the identities.
func TestJudgeHostPollers(t *testing.T) {
	spec := types.HostSpec{Name: "hv1", Address: "10.0.0.1"}
	const (
		a      = "vmha-host hv1 machine=aaaa addr=10.0.0.1,192.168.1.1 pid=10"
		aAgain = "vmha-host hv1 machine=aaaa addr=10.0.0.1,192.168.1.1 pid=11" // restarted on the same machine
		b      = "vmha-host hv1 machine=bbbb addr=10.0.0.2 pid=10"
	)
	for _, c := range []struct {
		name    string
		spec    types.HostSpec
		pollers []*taskqueuepb.PollerInfo
		alive   bool
		want    []string
	}{
		{"nobody polls", spec, nil, false, nil},
		{"one machine", spec, []*taskqueuepb.PollerInfo{poller(a, time.Second)}, true, nil},
		{"restarted on one machine", spec, []*taskqueuepb.PollerInfo{poller(a, 30*time.Second), poller(aAgain, time.Second)}, true, nil},
		{"older worker without identity", spec, []*taskqueuepb.PollerInfo{poller("4242@hv1", time.Second)}, true, nil},
		{"two machines", types.HostSpec{Name: "hv1", Address: "hv1.example.org"},
			[]*taskqueuepb.PollerInfo{poller(a, time.Second), poller(b, 2*time.Second)}, false, []string{a, b, "two machines"}},
		{"another machine's address", spec, []*taskqueuepb.PollerInfo{poller(b, time.Second)}, false, []string{b, "10.0.0.1"}},
		{"address spelt otherwise", types.HostSpec{Name: "hv1", Address: "fd00:0::1"},
			[]*taskqueuepb.PollerInfo{poller("vmha-host hv1 machine=aaaa addr=fd00::1 pid=1", time.Second)}, true, nil},
		{"DNS name: no address check", types.HostSpec{Name: "hv1", Address: "hv1.example.org"},
			[]*taskqueuepb.PollerInfo{poller(b, time.Second)}, true, nil},
		{"loopback: no address check", types.HostSpec{Name: "hv1", Address: "127.0.0.1"},
			[]*taskqueuepb.PollerInfo{poller(b, time.Second)}, true, nil},
		{"partial address list: no address check", spec,
			[]*taskqueuepb.PollerInfo{poller("vmha-host hv1 machine=bbbb addr=10.0.0.2,+ pid=1", time.Second)}, true, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			alive, conflict := activities.JudgeHostPollers(c.spec, activities.RecentPollers(c.pollers, time.Now(), time.Minute))
			if alive != c.alive {
				t.Fatalf("alive %v (%s), want %v", alive, conflict, c.alive)
			}
			for _, w := range c.want {
				if !strings.Contains(conflict, w) {
					t.Errorf("conflict %q does not name %q", conflict, w)
				}
			}
		})
	}
	// A poller from another machine that stopped before the grace is history, not a conflict.
	if alive, conflict := activities.JudgeHostPollers(spec, activities.RecentPollers(
		[]*taskqueuepb.PollerInfo{poller(a, time.Second), poller(b, 2*time.Minute)}, time.Now(), time.Minute)); !alive {
		t.Fatalf("an old poller made the host suspect: %s", conflict)
	}
}

// twoMachinesClient: two machines poll hv1's queue.
type twoMachinesClient struct{ client.Client }

func (twoMachinesClient) DescribeTaskQueue(context.Context, string, enumspb.TaskQueueType) (*workflowservice.DescribeTaskQueueResponse, error) {
	return &workflowservice.DescribeTaskQueueResponse{Pollers: []*taskqueuepb.PollerInfo{
		poller("vmha-host hv1 machine=aaaa addr=10.0.0.1 pid=1", time.Second),
		poller("vmha-host hv1 machine=bbbb addr=10.0.0.2 pid=1", time.Second),
	}}, nil
}

// TestWatchHostCountsTwoMachinesAsNoWorker: the watch reports the worker not alive (so the host is suspect,
// never healthy) when two machines poll the host's queue.
func TestWatchHostCountsTwoMachinesAsNoWorker(t *testing.T) {
	f := newWatchFixture(t)
	var suite testsuite.WorkflowTestSuite
	f.env = suite.NewTestActivityEnvironment()
	f.env.RegisterActivity(&activities.Controller{
		Client: twoMachinesClient{}, Power: f.power, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Probe: activities.ProbeSettings{Interval: 20 * time.Millisecond, NetworkTimeout: 50 * time.Millisecond, BMCTimeout: time.Second,
			MissesBeforeSuspect: 1, MissesBeforeDead: 3, MissesBeforeUnreachable: 3, PowerConfirmations: 2, WorkerGrace: time.Minute, BMCIdleInterval: time.Second},
	})
	if p := f.watch(t, types.Probe{}, time.Minute); p.Reach != types.ReachUp || p.WorkerAlive {
		t.Fatalf("probe %+v: want reachable with no live worker", p)
	}
}
