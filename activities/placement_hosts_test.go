package activities

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"vmha/types"
)

// TestPlacementHostsKeepOnlyWhatPlacementReads (issue 10): a host of 40 running VMs comes back without its address,
// BMC and the UUIDs of VMs the scheduler holds no reservation for, in a few hundred bytes; a reserved VM it runs is
// kept, so that placement does not count it twice; a host without stats stays without.
func TestPlacementHostsKeepOnlyWhatPlacementReads(t *testing.T) {
	running := make([]string, 40)
	for i := range running {
		running[i] = fmt.Sprintf("00000000-0000-0000-0000-%012d", i)
	}
	full := types.Candidate{
		Spec: types.HostSpec{Name: "hv1", Address: "10.0.0.1", LibvirtURI: "qemu+tcp://10.0.0.1/system",
			BMC:    types.BMCSpec{Address: "10.0.1.1", User: "admin", PasswordFile: "/etc/vmha/bmc/hv1"},
			Labels: map[string]string{"rack": "a"}, Capacity: types.Capacity{VCPUs: 64}},
		State: types.HostHealthy,
		Stats: types.HostStats{Host: "hv1", CPULoad: 0.5, CPUs: 64, MemoryTotalMiB: 262144, MemoryFreeMiB: 100000,
			VCPUsAllocated: 40, MemoryAllocatedMiB: 40960, AntiAffinityGroups: []string{"db"}, Running: running,
			SharedStorageOK: true, SampledAt: time.Unix(1000, 0)},
	}
	bare := types.Candidate{Spec: types.HostSpec{Name: "hv2", Address: "10.0.0.2"}, State: types.HostSuspect}
	got := placementHosts([]types.Candidate{full, bare}, []string{running[7], "elsewhere"})
	if len(got) != 2 {
		t.Fatalf("%d hosts, want 2", len(got))
	}
	h := got[0]
	if !slices.Equal(h.Stats.Running, []string{running[7]}) {
		t.Fatalf("running %v, want only the reserved %s", h.Stats.Running, running[7])
	}
	c := h.Candidate()
	if c.Spec.Name != "hv1" || c.Spec.Labels["rack"] != "a" || c.Spec.Capacity.VCPUs != 64 || c.State != types.HostHealthy ||
		c.Stats.MemoryFreeMiB != 100000 || c.Stats.VCPUsAllocated != 40 || !slices.Equal(c.Stats.AntiAffinityGroups, []string{"db"}) ||
		!c.Stats.SampledAt.Equal(full.Stats.SampledAt) || !c.Stats.SharedStorageOK {
		t.Fatalf("placement lost something it reads: %+v", c)
	}
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 500 {
		t.Fatalf("two hosts take %d bytes: %s", len(b), b)
	}
	if !got[1].Stats.SampledAt.IsZero() || got[1].State != types.HostSuspect {
		t.Fatalf("host without stats: %+v", got[1])
	}
}
