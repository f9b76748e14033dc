// Package placement chooses the host a VM runs on. It is pure and deterministic, so the Scheduler workflow can
// run it inside its update handler, where every placement of the cluster is serialised.
package placement

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"vmha/types"
)

// loadTie is the CPU load difference under which two hosts count as equally loaded and free memory decides.
const loadTie = 0.02

// maxNamed bounds how many rejected hosts an answer names with the reason; the others are only counted by reason,
// so that an answer (and the error of a VM left down) stays the same size in a cluster of thousands.
const maxNamed = 8

// Choose returns the eligible host with the lowest CPU load (ties: most free memory, then name), counting the
// reservations that the hosts' stats cannot show yet, or an empty Host and why hosts were rejected.
func Choose(req types.PlacementRequest, hosts []types.Candidate, reservations []types.Reservation) types.Placement {
	type scored struct {
		name    string
		load    float64
		freeMiB int64
	}
	var eligible []scored
	type rejection struct{ host, kind, why string }
	var rejected []rejection
	for _, c := range hosts {
		name := c.Spec.Name
		pending := Pending(reservations, name, c.Stats)
		if kind, why := reject(req, c, pending); why != "" {
			rejected = append(rejected, rejection{name, kind, why})
			continue
		}
		free := freeMemory(c, pending, req.Policy.HostReserveMiB)
		eligible = append(eligible, scored{name: name, load: effectiveLoad(c, pending), freeMiB: free})
	}
	sort.Slice(eligible, func(i, j int) bool {
		a, b := eligible[i], eligible[j]
		if d := a.load - b.load; d < -loadTie || d > loadTie {
			return a.load < b.load
		}
		if a.freeMiB != b.freeMiB {
			return a.freeMiB > b.freeMiB
		}
		return a.name < b.name
	})
	p := types.Placement{ReservationID: req.ReservationID}
	if len(eligible) > 0 {
		p.Host = eligible[0].name
	}
	if len(rejected) == 0 {
		return p
	}
	sort.Slice(rejected, func(i, j int) bool { return rejected[i].host < rejected[j].host })
	p.Rejected, p.RejectedBy = map[string]string{}, map[string]int{}
	for i, r := range rejected {
		if i < maxNamed {
			p.Rejected[r.host] = r.why
		}
		p.RejectedBy[r.kind]++
	}
	return p
}

// Kinds of rejection, the keys of Placement.RejectedBy.
const (
	KindFailedHost  = "failed host"
	KindExcluded    = "excluded"
	KindNotHealthy  = "not healthy"
	KindNoStats     = "no stats"
	KindNoShare     = "no shared storage"
	KindPinHosts    = "pinHosts"
	KindAvoidHosts  = "avoidHosts"
	KindPinLabels   = "pinLabels"
	KindAvoidLabels = "avoidLabels"
	KindAntiAff     = "anti-affinity"
	KindMemory      = "memory"
	KindVCPUs       = "vCPUs"
)

// Pending returns the reservations on host that its stats do not include: not released yet, or
// released (VM running) after the sample was taken, and in either case not among the domains the sample saw
// running. Two recoveries with snapshots of different ages thus never count one VM twice.
func Pending(reservations []types.Reservation, host string, stats types.HostStats) []types.Reservation {
	var out []types.Reservation
	for _, r := range reservations {
		if r.Host == host && (r.ReleasedAt.IsZero() || r.ReleasedAt.After(stats.SampledAt)) && !slices.Contains(stats.Running, r.VMUUID) {
			out = append(out, r)
		}
	}
	return out
}

// reject says why a candidate cannot take the VM (the kind and the reason in words), or "" when it can.
func reject(req types.PlacementRequest, c types.Candidate, pending []types.Reservation) (kind, why string) {
	name, vm, rules := c.Spec.Name, req.VM, req.VM.Policy.Rules
	switch {
	case name == req.FailedHost:
		return KindFailedHost, "it is the failed host"
	case slices.Contains(req.Exclude, name):
		return KindExcluded, "excluded after a failed attempt"
	case c.State != types.HostHealthy:
		return KindNotHealthy, fmt.Sprintf("state is %s", orNone(string(c.State)))
	case c.Stats.SampledAt.IsZero():
		return KindNoStats, "no stats from its worker"
	case !c.Stats.SharedStorageOK:
		return KindNoShare, "shared storage not visible"
	case len(rules.PinHosts) > 0 && !slices.Contains(rules.PinHosts, name):
		return KindPinHosts, fmt.Sprintf("not in pinHosts %v", rules.PinHosts)
	case slices.Contains(rules.AvoidHosts, name):
		return KindAvoidHosts, "listed in avoidHosts"
	}
	for _, l := range rules.PinLabels {
		if !hasLabel(c.Spec.Labels, l) {
			return KindPinLabels, fmt.Sprintf("lacks pinned label %s", l)
		}
	}
	for _, l := range rules.AvoidLabels {
		if hasLabel(c.Spec.Labels, l) {
			return KindAvoidLabels, fmt.Sprintf("has avoided label %s", l)
		}
	}
	if g := rules.AntiAffinityGroup; g != "" {
		if slices.Contains(c.Stats.AntiAffinityGroups, g) {
			return KindAntiAff, fmt.Sprintf("already runs a VM of anti-affinity group %s", g)
		}
		for _, r := range pending {
			if r.Group == g && r.VMUUID != vm.UUID {
				return KindAntiAff, fmt.Sprintf("a VM of anti-affinity group %s is being placed there", g)
			}
		}
	}
	if free := freeMemory(c, pending, req.Policy.HostReserveMiB); vm.MemoryMiB > free {
		return KindMemory, fmt.Sprintf("needs %d MiB, %d MiB free", vm.MemoryMiB, free)
	}
	cpus := cpuCount(c)
	allowed := int(float64(cpus) * req.Policy.OvercommitRatio)
	used := c.Stats.VCPUsAllocated
	for _, r := range pending {
		used += r.VCPUs
	}
	if used+vm.VCPUs > allowed {
		return KindVCPUs, fmt.Sprintf("needs %d vCPUs, %d of %d allowed in use", vm.VCPUs, used, allowed)
	}
	return "", ""
}

// freeMemory is what a VM may still use: libvirt's free memory less the host reserve, capped by an operator's
// capacity override, less the memory promised to VMs the stats do not show yet.
func freeMemory(c types.Candidate, pending []types.Reservation, reserveMiB int64) int64 {
	free := c.Stats.MemoryFreeMiB - reserveMiB
	if cap := c.Spec.Capacity.MemoryMiB; cap > 0 {
		free = min(free, cap-c.Stats.MemoryAllocatedMiB)
	}
	for _, r := range pending {
		free -= r.MemoryMiB
	}
	return free
}

// effectiveLoad counts each pending vCPU as fully busy, so placements made together spread out instead of all
// landing on the host that was least loaded before any of them started.
func effectiveLoad(c types.Candidate, pending []types.Reservation) float64 {
	load := c.Stats.CPULoad
	cpus := cpuCount(c)
	for _, r := range pending {
		load += float64(r.VCPUs) / float64(cpus)
	}
	return load
}

func cpuCount(c types.Candidate) int {
	if c.Spec.Capacity.VCPUs > 0 {
		return c.Spec.Capacity.VCPUs
	}
	return max(c.Stats.CPUs, 1)
}

func hasLabel(labels map[string]string, kv string) bool {
	k, v, _ := strings.Cut(kv, "=")
	got, ok := labels[k]
	return ok && got == v
}

func orNone(s string) string {
	if s == "" {
		return "not reported"
	}
	return s
}
