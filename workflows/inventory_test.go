package workflows

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"vmha/types"
)

func spec(name, addr string) types.HostSpec {
	return types.HostSpec{Name: name, Address: addr, LibvirtURI: "qemu+tcp://" + addr + "/system",
		BMC: types.BMCSpec{Address: "bmc-" + name + ".example.org", User: "admin", PasswordEnv: "BMC_" + name}}
}

// inventoryEnv mocks the monitors that run now and records what the apply changes.
func inventoryEnv(running ...types.HostSpec) (*testsuite.TestWorkflowEnvironment, *[]string) {
	return inventoryEnvWith(inventoryFake{}, running...)
}

// inventoryFake: the catalog's HA VMs, and the changes that fail ("upsert hv3", "retire hv4"; each fails every time).
type inventoryFake struct {
	vms  []types.VMRecord
	fail map[string]bool
}

func inventoryEnvWith(f inventoryFake, running ...types.HostSpec) (*testsuite.TestWorkflowEnvironment, *[]string) {
	env := baseEnv()
	var mu sync.Mutex
	changes := []string{}
	record := func(s string) error {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, s)
		if f.fail[s] {
			return temporal.NewNonRetryableApplicationError(s+" failed", "Test", nil)
		}
		return nil
	}
	env.OnActivity(onShare.ListVMs, mock.Anything, mock.Anything).Return(func(_ context.Context, owner string) (types.VMListing, error) {
		var out types.VMListing
		for _, vm := range f.vms {
			if owner == "" || vm.Owner == owner {
				out.VMs = append(out.VMs, vm)
			}
		}
		return out, nil
	})
	env.OnActivity(controller.CheckSecrets, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(controller.ListHosts, mock.Anything).Return(func(context.Context) ([]types.Candidate, error) {
		var out []types.Candidate
		for _, s := range running {
			out = append(out, types.Candidate{Spec: s, State: types.HostHealthy})
		}
		return out, nil
	})
	env.OnActivity(controller.UpsertMonitor, mock.Anything, mock.Anything).Return(func(_ context.Context, s types.HostSpec) error {
		name := "upsert " + s.Name
		if f.fail[name] {
			_ = record(name + " " + s.Address)
			return temporal.NewNonRetryableApplicationError(name+" failed", "Test", nil)
		}
		return record(name + " " + s.Address)
	})
	env.OnActivity(controller.RetireMonitor, mock.Anything, mock.Anything).Return(func(_ context.Context, host string) error {
		return record("retire " + host)
	})
	return env, &changes
}

func TestApplyInventoryAddsUpdatesAndRetires(t *testing.T) {
	env, changes := inventoryEnv(spec("hv1", "10.0.0.1"), spec("hv2", "10.0.0.2"), spec("hv4", "10.0.0.4"))
	env.ExecuteWorkflow(ApplyInventory, types.Inventory{Hosts: []types.HostSpec{
		spec("hv1", "10.0.0.1"), spec("hv2", "10.0.0.22"), spec("hv3", "10.0.0.3"),
	}})
	var res types.ApplyResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Added, []string{"hv3"}) || !slices.Equal(res.Updated, []string{"hv2"}) ||
		!slices.Equal(res.Unchanged, []string{"hv1"}) || !slices.Equal(res.Removed, []string{"hv4"}) {
		t.Fatalf("result %+v", res)
	}
	if got := strings.Join(*changes, ", "); got != "upsert hv2 10.0.0.22, upsert hv3 10.0.0.3, retire hv4" {
		t.Fatalf("changes: %s", got)
	}
}

func TestApplyInventoryRefusesBadFileAndChangesNothing(t *testing.T) {
	env, changes := inventoryEnv(spec("hv1", "10.0.0.1"))
	bad := spec("hv2", "not an address")
	env.ExecuteWorkflow(ApplyInventory, types.Inventory{Hosts: []types.HostSpec{spec("hv1", "10.0.0.1"), bad, spec("hv1", "10.0.0.9")}})
	err := env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), `address "not an address"`) || !strings.Contains(err.Error(), "duplicate") {
		t.Fatalf("want an error naming the bad address and the duplicate, got %v", err)
	}
	if len(*changes) != 0 {
		t.Fatalf("a bad inventory changed monitors: %v", *changes)
	}
}

// TestApplyInventoryRefusesRetiringAHostThatOwnsVMs: renaming hv2 to hv3 would retire hv2 and orphan its catalog
// entries; the apply is refused, naming the host and its VMs, and nothing changes.
func TestApplyInventoryRefusesRetiringAHostThatOwnsVMs(t *testing.T) {
	env, changes := inventoryEnvWith(inventoryFake{vms: []types.VMRecord{
		{Name: "web2", Owner: "hv2"}, {Name: "db1", Owner: "hv2"}, {Name: "web1", Owner: "hv1"},
	}}, spec("hv1", "10.0.0.1"), spec("hv2", "10.0.0.2"))
	env.ExecuteWorkflow(ApplyInventory, types.Inventory{Hosts: []types.HostSpec{spec("hv1", "10.0.0.1"), spec("hv3", "10.0.0.2")}})
	err := env.GetWorkflowError()
	if err == nil || !strings.Contains(err.Error(), "hv2 still owns HA VMs db1, web2") || !strings.Contains(err.Error(), "fail it over") {
		t.Fatalf("want an error naming hv2 and its VMs, got %v", err)
	}
	if len(*changes) != 0 {
		t.Fatalf("a refused apply changed monitors: %v", *changes)
	}
}

// TestApplyInventoryUndoesWhatItDidWhenAStepFails: a failing step takes back every change before it, last first:
// a started monitor is retired, an updated one gets its old spec back, and the error says nothing changed.
func TestApplyInventoryUndoesWhatItDidWhenAStepFails(t *testing.T) {
	for _, c := range []struct {
		name    string
		fail    []string
		changes string
		want    []string
	}{
		{"an upsert fails", []string{"upsert hv4"},
			"upsert hv2 10.0.0.22, upsert hv3 10.0.0.3, upsert hv4 10.0.0.4, retire hv4, retire hv3, upsert hv2 10.0.0.2",
			[]string{"monitor hv4", "upsert hv4 failed"}},
		{"a retirement fails", []string{"retire hv5"},
			"upsert hv2 10.0.0.22, upsert hv3 10.0.0.3, upsert hv4 10.0.0.4, retire hv5, retire hv4, retire hv3, upsert hv2 10.0.0.2",
			[]string{"retire hv5"}},
		{"the undo fails too", []string{"upsert hv4", "retire hv3"},
			"upsert hv2 10.0.0.22, upsert hv3 10.0.0.3, upsert hv4 10.0.0.4, retire hv4, retire hv3, upsert hv2 10.0.0.2",
			[]string{"upsert hv4 failed", "undo failed: monitor hv3 started by this apply still runs"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fail := map[string]bool{}
			for _, f := range c.fail {
				fail[f] = true
			}
			env, changes := inventoryEnvWith(inventoryFake{fail: fail},
				spec("hv1", "10.0.0.1"), spec("hv2", "10.0.0.2"), spec("hv5", "10.0.0.5"))
			env.ExecuteWorkflow(ApplyInventory, types.Inventory{Hosts: []types.HostSpec{
				spec("hv1", "10.0.0.1"), spec("hv2", "10.0.0.22"), spec("hv3", "10.0.0.3"), spec("hv4", "10.0.0.4"),
			}})
			err := env.GetWorkflowError()
			if err == nil {
				t.Fatal("apply succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			if got := strings.Join(*changes, ", "); got != c.changes {
				t.Fatalf("changes:\n got %s\nwant %s", got, c.changes)
			}
		})
	}
}

// TestApplyInventoryEmptyLabelsAreNoChange: `labels: {}` against a monitor without labels is unchanged.
func TestApplyInventoryEmptyLabelsAreNoChange(t *testing.T) {
	env, changes := inventoryEnv(spec("hv1", "10.0.0.1"))
	s := spec("hv1", "10.0.0.1")
	s.Labels = map[string]string{}
	env.ExecuteWorkflow(ApplyInventory, types.Inventory{Hosts: []types.HostSpec{s}})
	var res types.ApplyResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Unchanged, []string{"hv1"}) || len(*changes) != 0 {
		t.Fatalf("result %+v, changes %v", res, *changes)
	}
}
