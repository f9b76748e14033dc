package placement

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"vmha/types"
)

var sampled = time.Unix(1000, 0)

func host(name string, load float64, freeMiB int64, labels map[string]string) types.Candidate {
	return types.Candidate{
		Spec:  types.HostSpec{Name: name, Labels: labels},
		State: types.HostHealthy,
		Stats: types.HostStats{Host: name, CPULoad: load, CPUs: 4, MemoryTotalMiB: 16384, MemoryFreeMiB: freeMiB, SharedStorageOK: true, SampledAt: sampled},
	}
}

// ask is a request and the hosts the scheduler places it among.
type ask struct {
	req   types.PlacementRequest
	hosts []types.Candidate
}

func request(rules types.Rules, hosts ...types.Candidate) ask {
	return ask{req: types.PlacementRequest{
		ReservationID: "r", FailedHost: "hv0",
		VM:     types.VMRecord{UUID: "u1", Name: "vm", MemoryMiB: 1024, VCPUs: 2, Policy: types.HAPolicy{Enabled: true, Rules: rules}},
		Policy: types.Policy{OvercommitRatio: 2, HostReserveMiB: 256},
	}, hosts: hosts}
}

func TestChoose(t *testing.T) {
	rackA, rackB := map[string]string{"rack": "a"}, map[string]string{"rack": "b"}
	busyGroup := host("hv3", 0.0, 8000, rackB)
	busyGroup.Stats.AntiAffinityGroups = []string{"db"}
	unhealthy := host("hv4", 0.0, 8000, nil)
	unhealthy.State = types.HostIsolated
	noShare := host("hv5", 0.0, 8000, nil)
	noShare.Stats.SharedStorageOK = false
	full := host("hv6", 0.0, 8000, nil)
	full.Stats.VCPUsAllocated = 7
	for _, c := range []struct {
		name     string
		req      ask
		want     string
		rejected []string // substrings of the reasons
	}{
		{"lowest load wins", request(types.Rules{}, host("hv1", 0.5, 8000, nil), host("hv2", 0.1, 4000, nil)), "hv2", nil},
		{"tie broken by free memory", request(types.Rules{}, host("hv1", 0.10, 4000, nil), host("hv2", 0.11, 8000, nil)), "hv2", nil},
		{"failed host never chosen", request(types.Rules{}, host("hv0", 0.0, 8000, nil), host("hv1", 0.9, 8000, nil)), "hv1", []string{"hv0: it is the failed host"}},
		{"pinned host", request(types.Rules{PinHosts: []string{"hv1"}}, host("hv1", 0.9, 8000, nil), host("hv2", 0.1, 8000, nil)), "hv1", []string{"hv2: not in pinHosts"}},
		{"pinned label", request(types.Rules{PinLabels: []string{"rack=b"}}, host("hv1", 0.1, 8000, rackA), host("hv2", 0.9, 8000, rackB)), "hv2", []string{"lacks pinned label rack=b"}},
		{"avoided host", request(types.Rules{AvoidHosts: []string{"hv2"}}, host("hv1", 0.9, 8000, nil), host("hv2", 0.1, 8000, nil)), "hv1", []string{"hv2: listed in avoidHosts"}},
		{"avoided label", request(types.Rules{AvoidLabels: []string{"rack=a"}}, host("hv1", 0.1, 8000, rackA), host("hv2", 0.9, 8000, rackB)), "hv2", []string{"has avoided label rack=a"}},
		{"anti-affinity", request(types.Rules{AntiAffinityGroup: "db"}, host("hv1", 0.9, 8000, rackA), busyGroup), "hv1", []string{"hv3: already runs a VM of anti-affinity group db"}},
		{"rules together", request(types.Rules{PinLabels: []string{"rack=b"}, AvoidHosts: []string{"hv2"}}, host("hv1", 0.1, 8000, rackA), host("hv2", 0.1, 8000, rackB), host("hv7", 0.8, 8000, rackB)), "hv7", nil},
		{"not enough memory", request(types.Rules{}, host("hv1", 0.1, 1200, nil)), "", []string{"hv1: needs 1024 MiB, 944 MiB free"}},
		{"vCPU overcommit", request(types.Rules{}, full), "", []string{"needs 2 vCPUs, 7 of 8 allowed in use"}},
		{"unhealthy, no share", request(types.Rules{}, unhealthy, noShare), "", []string{"hv4: state is isolated", "hv5: shared storage not visible"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := Choose(c.req.req, c.req.hosts, nil)
			if p.Host != c.want {
				t.Fatalf("chose %q, want %q (rejected %v)", p.Host, c.want, p.Rejected)
			}
			all := ""
			for h, why := range p.Rejected {
				all += h + ": " + why + "\n"
			}
			for _, r := range c.rejected {
				if !strings.Contains(all, r) {
					t.Errorf("rejections %q lack %q", all, r)
				}
			}
		})
	}
}

// TestChooseCountsReservations: capacity promised to VMs the stats cannot show yet is taken, and a VM that runs
// already (released before the sample) is not counted twice.
func TestChooseCountsReservations(t *testing.T) {
	req := request(types.Rules{AntiAffinityGroup: "db"}, host("hv1", 0.1, 2400, nil), host("hv2", 0.3, 8000, nil))
	pending := []types.Reservation{{ID: "other", Host: "hv1", VMUUID: "u2", MemoryMiB: 1024, VCPUs: 2, CreatedAt: sampled}}
	// hv1 is idler by its stats (0.1 vs 0.3), but 2 pending vCPUs of 4 make it 0.6 busy.
	if p := Choose(req.req, req.hosts, pending); p.Host != "hv2" {
		t.Fatalf("chose %s despite hv1's pending reservation (%v)", p.Host, p.Rejected)
	}
	if p := Choose(req.req, req.hosts, nil); p.Host != "hv1" {
		t.Fatalf("without reservations hv1 is the least loaded, chose %s", p.Host)
	}
	grouped := []types.Reservation{{ID: "g", Host: "hv2", VMUUID: "u3", Group: "db", CreatedAt: sampled}}
	if p := Choose(req.req, req.hosts, grouped); p.Host != "hv1" {
		t.Fatalf("chose %s next to a VM of the same anti-affinity group being placed (%v)", p.Host, p.Rejected)
	}
	releasedBefore := []types.Reservation{{ID: "old", Host: "hv1", VMUUID: "u4", MemoryMiB: 1024, VCPUs: 2, CreatedAt: sampled.Add(-time.Minute), ReleasedAt: sampled.Add(-time.Second)}}
	if p := Choose(req.req, req.hosts, releasedBefore); p.Host != "hv1" {
		t.Fatalf("a VM already in hv1's stats was counted again: chose %s (%v)", p.Host, p.Rejected)
	}
}

// TestPendingSkipsVMsTheStatsSaw: a VM released after the sample but already running when it was taken is in the
// stats; counting its reservation as well would refuse room that exists.
func TestPendingSkipsVMsTheStatsSaw(t *testing.T) {
	stats := types.HostStats{Host: "hv1", SampledAt: sampled, Running: []string{"seen"}}
	rs := []types.Reservation{
		{ID: "a", Host: "hv1", VMUUID: "seen", ReleasedAt: sampled.Add(time.Second)},
		{ID: "b", Host: "hv1", VMUUID: "starting"},
		{ID: "c", Host: "hv1", VMUUID: "done-before", ReleasedAt: sampled.Add(-time.Second)},
		{ID: "d", Host: "hv2", VMUUID: "elsewhere"},
	}
	got := Pending(rs, "hv1", stats)
	if len(got) != 1 || got[0].ID != "b" {
		t.Fatalf("pending %+v, want only b", got)
	}
}

// TestChooseNamesFewRejectedHosts: in a large cluster an answer names a few rejected hosts and counts all of them
// by reason, so its size does not grow with the cluster.
func TestChooseNamesFewRejectedHosts(t *testing.T) {
	var hosts []types.Candidate
	for i := range 1000 {
		hosts = append(hosts, host(fmt.Sprintf("hv%04d", i+1), 0.1, 1000, nil))
	}
	hosts = append(hosts, host("hv0", 0.0, 8000, nil))
	a := request(types.Rules{}, hosts...)
	p := Choose(a.req, a.hosts, nil)
	if p.Host != "" || len(p.Rejected) != maxNamed {
		t.Fatalf("chose %q, named %d rejected hosts; want none chosen and %d named", p.Host, len(p.Rejected), maxNamed)
	}
	if p.RejectedBy[KindMemory] != 1000 || p.RejectedBy[KindFailedHost] != 1 || len(p.RejectedBy) != 2 {
		t.Fatalf("rejected by reason %v, want 1000 for memory and 1 failed host", p.RejectedBy)
	}
	if b, _ := json.Marshal(p); len(b) > 1000 {
		t.Fatalf("an answer about 1001 hosts takes %d bytes: %s", len(b), b)
	}
}
