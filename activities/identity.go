package activities

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	taskqueuepb "go.temporal.io/api/taskqueue/v1"

	"vmha/types"
)

// HostIdentity is what a hypervisor worker announces as its Temporal worker identity, so that whoever describes
// a host's task queue can tell which machine polls it:
//
//	vmha-host hv1 machine=4c4c4544004c3510 addr=10.0.0.11,fd00::11 pid=4242
//
// Addrs are the machine's own global unicast addresses (no loopback, no link-local), one of which must be the
// inventory address the controller probes. AddrsPartial says the list was cut short (too many addresses to fit
// in an identity), so an address missing from it proves nothing.
type HostIdentity struct {
	Host         string
	MachineID    string
	Addrs        []string
	AddrsPartial bool
	PID          int
}

const identityPrefix = "vmha-host "

// String is the identity in its announced form.
func (id HostIdentity) String() string {
	addrs := strings.Join(id.Addrs, ",")
	if id.AddrsPartial {
		addrs += ",+"
	}
	return fmt.Sprintf("%s%s machine=%s addr=%s pid=%d", identityPrefix, id.Host, id.MachineID, addrs, id.PID)
}

// ParseHostIdentity reads an announced identity; ok is false for anything else (an older worker, another tool).
func ParseHostIdentity(s string) (id HostIdentity, ok bool) {
	rest, found := strings.CutPrefix(s, identityPrefix)
	if !found {
		return id, false
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return id, false
	}
	id.Host = fields[0]
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "machine":
			id.MachineID = v
		case "addr":
			for _, a := range strings.Split(v, ",") {
				switch {
				case a == "+":
					id.AddrsPartial = true
				case a != "":
					id.Addrs = append(id.Addrs, a)
				}
			}
		case "pid":
			id.PID, _ = strconv.Atoi(v)
		}
	}
	return id, id.MachineID != ""
}

// HasAddr says whether the identity announces addr (compared as IP addresses).
func (id HostIdentity) HasAddr(addr string) bool {
	want := net.ParseIP(addr)
	return slices.ContainsFunc(id.Addrs, func(a string) bool { return want.Equal(net.ParseIP(a)) })
}

// RecentPollers are the pollers seen within window before now.
func RecentPollers(pollers []*taskqueuepb.PollerInfo, now time.Time, window time.Duration) []*taskqueuepb.PollerInfo {
	var out []*taskqueuepb.PollerInfo
	for _, p := range pollers {
		if p.GetLastAccessTime() != nil && now.Sub(p.GetLastAccessTime().AsTime()) < window {
			out = append(out, p)
		}
	}
	return out
}

// JudgeHostPollers decides from the recent pollers of a host's own queue whether its worker counts as alive.
// A worker is alive when something polls; but two machines polling one host's queue (two workers with the same
// VMHA_HOST_NAME), or a worker on a machine that does not hold the inventory address, means the activities meant
// for this host may run elsewhere: then it is not alive, and conflict says why, naming the identities.
// The address is compared only when the inventory gives an IP address that is not loopback (a DNS name may
// resolve to any of a host's addresses; loopback is a test set-up where one machine plays several hosts).
func JudgeHostPollers(spec types.HostSpec, recent []*taskqueuepb.PollerInfo) (alive bool, conflict string) {
	if len(recent) == 0 {
		return false, ""
	}
	ip := net.ParseIP(spec.Address)
	checkAddr := ip != nil && !ip.IsLoopback()
	var problems []string
	machines := map[string]string{} // machine ID -> first identity seen with it
	var order []string
	for _, p := range recent {
		id, ok := ParseHostIdentity(p.GetIdentity())
		if !ok {
			continue
		}
		if _, seen := machines[id.MachineID]; !seen {
			machines[id.MachineID] = p.GetIdentity()
			order = append(order, id.MachineID)
		}
		if checkAddr && !id.AddrsPartial && len(id.Addrs) > 0 && !id.HasAddr(spec.Address) {
			problems = append(problems, fmt.Sprintf("worker %q does not hold the inventory address %s of host %s",
				p.GetIdentity(), spec.Address, spec.Name))
		}
	}
	if len(order) > 1 {
		problems = append(problems, fmt.Sprintf("two machines poll host %s's queue %s: %q and %q (two workers with VMHA_HOST_NAME=%s?)",
			spec.Name, types.HostTaskQueue(spec.Name), machines[order[0]], machines[order[1]], spec.Name))
	}
	if len(problems) > 0 {
		return false, strings.Join(problems, "; ")
	}
	return true, ""
}
