package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"vmha/types"
)

// strayLooks bounds one run of ResolveStrayCopy; the keeper reports the copy again if it still runs.
const (
	strayLooks    = 20
	strayInterval = 30 * time.Second
)

// ResolveStrayCopy decides about a VM running on a host the catalog does not give it to (a host that came back
// and started an HA VM by itself, an operator's virsh start): two copies write one disk, so the stray is destroyed
// as soon as the owner's copy is seen running. A stray that is the only running copy is never destroyed: people are
// told, loudly, and it is looked at again until one of the two copies stops.
func ResolveStrayCopy(ctx workflow.Context, s types.StrayCopy) (string, error) {
	alert := types.Event{Kind: types.EventHostAlert, Host: s.Host, VM: s.VM, VMUUID: s.UUID,
		WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID}
	told := false
	for look := 0; look < strayLooks; look++ {
		if runs, err := runsOn(ctx, s.Host, s.UUID); err == nil && !runs {
			return "the stray copy no longer runs", nil
		}
		if owner, err := runsOn(ctx, s.Owner, s.UUID); err == nil && owner {
			return destroyStray(ctx, s, alert)
		}
		if !told {
			awaitAll(ctx, notify(ctx, alert, types.EventHostAlert, fmt.Sprintf(
				"%s runs on %s, but the catalog gives it to %s, whose copy is not seen running: left running; stop one of them",
				s.VM, s.Host, s.Owner)))
			told = true
		}
		_ = workflow.Sleep(ctx, strayInterval)
	}
	return "still unresolved: the keeper reports it again", nil
}

// runsOn asks a host whether the VM runs there. A host that does not answer within seconds is no answer.
func runsOn(ctx workflow.Context, host, uuid string) (bool, error) {
	var state types.DomainState
	if err := workflow.ExecuteActivity(says(statsOptions(ctx, host), "does %s run the VM?", host), onHost.DomainState, uuid).Get(ctx, &state); err != nil {
		return false, err
	}
	return state == types.DomainRunning || state == types.DomainMigrating, nil
}

// destroyStray ends the stray copy on its host and says so at error level.
func destroyStray(ctx workflow.Context, s types.StrayCopy, alert types.Event) (string, error) {
	if err := workflow.ExecuteActivity(says(hostOptions(ctx, s.Host), "destroy the stray copy of %s on %s: it runs on its owner %s", s.VM, s.Host, s.Owner), onHost.DestroyStray, s).Get(ctx, nil); err != nil {
		return "", fmt.Errorf("destroy stray copy of %s on %s: %w", s.VM, s.Host, err)
	}
	msg := fmt.Sprintf("%s ran on %s and on its owner %s: the copy on %s was destroyed", s.VM, s.Host, s.Owner, s.Host)
	awaitAll(ctx, notify(ctx, alert, types.EventHostAlert, msg))
	return msg, nil
}
