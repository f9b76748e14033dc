package workers

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	"vmha/activities"
)

type fakeQueue struct {
	pollers []*taskqueuepb.PollerInfo
	fails   int
	asked   []string
}

func (f *fakeQueue) DescribeTaskQueue(_ context.Context, q string, _ enumspb.TaskQueueType) (*workflowservice.DescribeTaskQueueResponse, error) {
	f.asked = append(f.asked, q)
	if f.fails > 0 {
		f.fails--
		return nil, errors.New("unavailable")
	}
	return &workflowservice.DescribeTaskQueueResponse{Pollers: f.pollers}, nil
}

func seen(identity string, ago time.Duration) *taskqueuepb.PollerInfo {
	return &taskqueuepb.PollerInfo{Identity: identity, LastAccessTime: timestamppb.New(time.Now().Add(-ago))}
}

// TestCheckHostQueue: a second machine under the same VMHA_HOST_NAME is refused, naming the variable and the other
// worker; the same machine restarting, an old poller, or an unidentified poller is not.
func TestCheckHostQueue(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	me := activities.HostIdentity{Host: "hv1", MachineID: "aaaa", Addrs: []string{"10.0.0.1"}, PID: 7}
	other := "vmha-host hv1 machine=bbbb addr=10.0.0.2 pid=9"
	for _, c := range []struct {
		name    string
		pollers []*taskqueuepb.PollerInfo
		want    []string // empty: starts
	}{
		{"empty queue", nil, nil},
		{"this machine before a restart", []*taskqueuepb.PollerInfo{seen("vmha-host hv1 machine=aaaa addr=10.0.0.1 pid=6", time.Second)}, nil},
		{"another machine, a minute and more ago", []*taskqueuepb.PollerInfo{seen(other, 2*time.Minute)}, nil},
		{"unidentified poller", []*taskqueuepb.PollerInfo{seen("123@somewhere", time.Second)}, nil},
		{"another machine now", []*taskqueuepb.PollerInfo{seen(other, 5*time.Second)}, []string{"VMHA_HOST_NAME=hv1", other, "vmha-host-hv1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			q := &fakeQueue{pollers: c.pollers}
			err := checkHostQueue(context.Background(), q, me, logger)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("started")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	q := &fakeQueue{fails: 2}
	if err := checkHostQueue(context.Background(), q, me, logger); err != nil || len(q.asked) != 3 || q.asked[0] != "vmha-host-hv1" {
		t.Fatalf("retry: %v after %v", err, q.asked)
	}
}

func TestHostIdentityAnnouncesThisMachine(t *testing.T) {
	id := hostIdentity("hv1")
	parsed, ok := activities.ParseHostIdentity(id.String())
	if !ok || parsed.Host != "hv1" || parsed.MachineID == "" || parsed.MachineID != id.MachineID || parsed.PID == 0 {
		t.Fatalf("identity %q parsed as %+v", id.String(), parsed)
	}
	if len(id.String()) > 1000 {
		t.Fatalf("identity longer than Temporal allows: %d", len(id.String()))
	}
}
