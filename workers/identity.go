package workers

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"

	"vmha/activities"
	"vmha/infra/config"
	"vmha/types"
)

// machineIDFiles hold the machine's stable ID (systemd's, then D-Bus's copy of it).
var machineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// maxAnnouncedAddrs keeps the identity well under Temporal's 1000-character limit on identities.
const maxAnnouncedAddrs = 12

// hostIdentity is what this hypervisor worker announces as its Temporal identity (activities.HostIdentity):
// its host name, the machine ID, the machine's own addresses and the process ID.
//
// The addresses are every global unicast address of the machine (loopback and link-local left out), not one
// "primary" address: the controller must check that the inventory address it probes belongs to this machine,
// and a hypervisor usually has several networks (management, storage, VM bridges) with no reliable way to tell
// from here which one the inventory names; the libvirt URI is usually qemu:///system and names none.
func hostIdentity(host string) activities.HostIdentity {
	addrs, partial := localAddrs()
	return activities.HostIdentity{Host: host, MachineID: machineID(), Addrs: addrs, AddrsPartial: partial, PID: os.Getpid()}
}

// machineID is the machine's ID, or (on a machine without one) "hostname-" and its host name: weaker, but it
// still tells two machines apart unless they also share a host name.
func machineID() string {
	for _, f := range machineIDFiles {
		if b, err := os.ReadFile(f); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" && !strings.ContainsAny(id, " \t,=") {
				return id
			}
		}
	}
	name, _ := os.Hostname()
	return "hostname-" + strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == ',' || r == '=' {
			return '_'
		}
		return r
	}, name)
}

// localAddrs are the machine's global unicast addresses, IPv4 first, at most maxAnnouncedAddrs (partial: more).
func localAddrs() (addrs []string, partial bool) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, true
	}
	var v4, v6 []string
	for _, a := range ifAddrs {
		ipnet, ok := a.(*net.IPNet)
		if !ok || !ipnet.IP.IsGlobalUnicast() {
			continue
		}
		if ipnet.IP.To4() != nil {
			v4 = append(v4, ipnet.IP.String())
		} else {
			v6 = append(v6, ipnet.IP.String())
		}
	}
	slices.Sort(v4)
	slices.Sort(v6)
	addrs = slices.Compact(append(v4, v6...))
	if len(addrs) > maxAnnouncedAddrs {
		return addrs[:maxAnnouncedAddrs], true
	}
	return addrs, false
}

// queueDescriber is the one client call the start-up check makes.
type queueDescriber interface {
	DescribeTaskQueue(ctx context.Context, taskQueue string, taskQueueType enumspb.TaskQueueType) (*workflowservice.DescribeTaskQueueResponse, error)
}

// identityWindow: a poller seen this recently is still running (an idle poll lasts up to a minute on Temporal).
const identityWindow = time.Minute

// checkHostQueue refuses to start a second hypervisor worker under a host name another machine already serves:
// both would poll one queue, and libvirt calls meant for one host would run on either. It describes the host's
// queue and fails when a poller from another machine ID polled within the last minute. Pollers that do not
// announce a vmha identity (older workers) cannot be told apart and are only logged. If the server cannot be
// asked within 30 s, the worker does not start either: it could not serve without the server anyway.
func checkHostQueue(ctx context.Context, c queueDescriber, me activities.HostIdentity, logger *slog.Logger) error {
	queue := types.HostTaskQueue(me.Host)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var resp *workflowservice.DescribeTaskQueueResponse
	var err error
	if activities.PollUntil(ctx, time.Second, func() bool {
		callCtx, callCancel := context.WithTimeout(ctx, 5*time.Second)
		defer callCancel()
		resp, err = c.DescribeTaskQueue(callCtx, queue, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
		if err != nil {
			logger.Warn("cannot describe this host's task queue yet", "task_queue", queue, "error", err)
		}
		return err == nil
	}) != nil {
		return fmt.Errorf("check that no other machine serves %s_HOST_NAME=%s (describe task queue %s): %w", config.Prefix, me.Host, queue, err)
	}
	for _, p := range activities.RecentPollers(resp.GetPollers(), time.Now(), identityWindow) {
		other, ok := activities.ParseHostIdentity(p.GetIdentity())
		switch {
		case !ok:
			logger.Warn("an unidentified poller serves this host's task queue", "task_queue", queue, "identity", p.GetIdentity())
		case other.MachineID != me.MachineID:
			return fmt.Errorf("%s_HOST_NAME=%s: another machine already serves host %s (worker %q polled task queue %s %s ago; this worker is %q): "+
				"give each hypervisor its own inventory name, or stop the other worker and start this one a minute later",
				config.Prefix, me.Host, me.Host, p.GetIdentity(), queue, time.Since(p.GetLastAccessTime().AsTime()).Round(time.Second), me.String())
		}
	}
	return nil
}
