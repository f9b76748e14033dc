package workflows

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/testsuite"

	"vmha/types"
)

func spec(name, addr string) types.HostSpec {
	return types.HostSpec{Name: name, Address: addr, LibvirtURI: "qemu+tcp://" + addr + "/system",
		BMC: types.BMCSpec{Address: "10.9.9.9", User: "admin", PasswordEnv: "BMC_" + name}}
}

// inventoryEnv mocks the monitors that run now and records what the apply changes.
func inventoryEnv(running ...types.HostSpec) (*testsuite.TestWorkflowEnvironment, *[]string) {
	env := baseEnv()
	var mu sync.Mutex
	changes := []string{}
	record := func(s string) { mu.Lock(); changes = append(changes, s); mu.Unlock() }
	env.OnActivity(controller.CheckSecrets, mock.Anything, mock.Anything).Return(nil)
	env.OnActivity(controller.ListHosts, mock.Anything).Return(func(context.Context) ([]types.Candidate, error) {
		var out []types.Candidate
		for _, s := range running {
			out = append(out, types.Candidate{Spec: s, State: types.HostHealthy})
		}
		return out, nil
	})
	env.OnActivity(controller.UpsertMonitor, mock.Anything, mock.Anything).Return(func(_ context.Context, s types.HostSpec) error {
		record("upsert " + s.Name + " " + s.Address)
		return nil
	})
	env.OnActivity(controller.RetireMonitor, mock.Anything, mock.Anything).Return(func(_ context.Context, host string) error {
		record("retire " + host)
		return nil
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
