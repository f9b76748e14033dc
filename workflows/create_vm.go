package workflows

import (
	"fmt"

	"github.com/google/uuid"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"vmha/activities"
	"vmha/types"
)

// CreateVM is the patent's first step: a new HA VM from an image on the shared storage. The scheduler picks the
// host; that host's worker writes the domain XML (disk on the share, vmha metadata), records it in the catalog,
// defines it and starts it. A host where a step fails is cleaned and the next candidate is tried.
func CreateVM(ctx workflow.Context, req types.CreateVMRequest) (types.VMRecord, error) {
	if err := req.Validate(); err != nil {
		return types.VMRecord{}, badInput(err)
	}
	if err := nameIsFree(ctx, req.Name); err != nil {
		return types.VMRecord{}, err
	}
	policy, err := loadPolicy(ctx)
	if err != nil {
		return types.VMRecord{}, err
	}
	// Runs begun before changeSchedulerLooks took their own snapshot of the cluster; the scheduler looks itself since.
	var candidates []types.Candidate
	if workflow.GetVersion(ctx, changeSchedulerLooks, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		if candidates, err = clusterSnapshot(ctx, ""); err != nil {
			return types.VMRecord{}, err
		}
	}
	vm := types.VMRecord{UUID: newUUID(ctx), Name: req.Name, MemoryMiB: req.MemoryMiB, VCPUs: req.VCPUs, Policy: req.Policy}
	p := placer{vm: vm, candidates: candidates, policy: policy, reservationPrefix: workflow.GetInfo(ctx).WorkflowExecution.ID,
		undo: func(ctx workflow.Context, host string) error { return discardFrom(ctx, host, vm.UUID) }}
	var created types.VMRecord
	_, err = p.run(ctx, func(ctx workflow.Context, host string) error {
		var err error
		created, err = createOn(ctx, host, activities.CreateDomainInput{UUID: vm.UUID, Request: req})
		return err
	})
	if err != nil {
		return types.VMRecord{}, fmt.Errorf("create %s: %w", req.Name, err)
	}
	return created, nil
}

// nameIsFree refuses a name the catalog already holds: names key disks and workflow IDs.
func nameIsFree(ctx workflow.Context, name string) error {
	var listing types.VMListing
	if err := workflow.ExecuteActivity(says(shareOptions(ctx), "is the name %s free in the catalog?", name), onShare.ListVMs, "").Get(ctx, &listing); err != nil {
		return fmt.Errorf("list VMs: %w", err)
	}
	for _, vm := range listing.VMs {
		if vm.Name == name {
			return badInput(fmt.Errorf("name %q: a VM of that name exists (uuid %s on %s)", name, vm.UUID, vm.Owner))
		}
	}
	return nil
}

// newUUID is chosen once and kept in history, so every retry and every candidate host creates the same VM.
func newUUID(ctx workflow.Context) string {
	var id string
	_ = workflow.SideEffect(ctx, func(workflow.Context) interface{} { return uuid.NewString() }).Get(&id)
	return id
}

// createOn is one attempt on one host: make the disk, record the VM as claimed by the host and define it; start;
// confirm running; commit.
func createOn(ctx workflow.Context, host string, in activities.CreateDomainInput) (types.VMRecord, error) {
	hctx := hostOptions(ctx, host)
	var rec types.VMRecord
	if err := workflow.ExecuteActivity(says(hctx, "make the disk of %s, record it and define it on %s", in.Request.Name, host), onHost.CreateDomain, in).Get(ctx, &rec); err != nil {
		return rec, fmt.Errorf("define on %s: %w", host, err)
	}
	if err := startAndConfirm(ctx, host, in.Request.Name, rec.Token()); err != nil {
		return rec, err
	}
	return commitOn(ctx, host, in.Request.Name, rec.Token())
}

// discardFrom removes a VM whose creation failed on a host, with its catalog entry, so the next host starts clean.
func discardFrom(ctx workflow.Context, host, uuid string) error {
	if err := workflow.ExecuteActivity(says(hostOptions(ctx, host), "discard the failed creation on %s", host), onHost.DiscardNew, uuid).Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Error("compensation failed: half-created VM left on host", "host", host, "vm_uuid", uuid, "error", err)
		return err
	}
	return nil
}

// badInput is an error no retry can fix; it names the field and the value.
func badInput(err error) error {
	return temporal.NewNonRetryableApplicationError(err.Error(), types.ErrTypeBadInput, nil)
}
