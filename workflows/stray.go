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
// and started an HA VM by itself, an operator's virsh start, a live migration whose arrival was missed). Two copies
// write one disk, so the stray is destroyed as soon as the owner's copy is seen running, and only then: a copy the
// owner is still receiving by migration is not running yet. When the owner answers that it does not run the VM,
// the stray is the only copy, and its host adopts it. When the owner does not answer, people are told, loudly, and
// it is looked at again until one of these holds.
func ResolveStrayCopy(ctx workflow.Context, s types.StrayCopy) (string, error) {
	alert := types.Event{Kind: types.EventHostAlert, Host: s.Host, VM: s.VM, VMUUID: s.UUID,
		WorkflowID: workflow.GetInfo(ctx).WorkflowExecution.ID}
	told := false
	for look := 0; look < strayLooks; look++ {
		if state, err := domainState(ctx, s.Host, s.UUID); err == nil && state != types.DomainRunning && state != types.DomainMigrating {
			return "the stray copy no longer runs", nil
		}
		switch owner, err := domainState(ctx, s.Owner, s.UUID); {
		case err == nil && owner == types.DomainRunning:
			return destroyStray(ctx, s, alert)
		case err == nil && owner != types.DomainMigrating:
			return adoptStray(ctx, s, alert, owner)
		}
		if !told {
			awaitAll(ctx, notify(ctx, alert, types.EventHostAlert, fmt.Sprintf(
				"%s runs on %s, but the catalog gives it to %s, which does not answer: left running; stop one of them",
				s.VM, s.Host, s.Owner)))
			told = true
		}
		_ = workflow.Sleep(ctx, strayInterval)
	}
	return "still unresolved: the keeper reports it again", nil
}

// domainState asks a host for the VM's state. A host that does not answer within seconds is no answer.
func domainState(ctx workflow.Context, host, uuid string) (types.DomainState, error) {
	var state types.DomainState
	err := workflow.ExecuteActivity(says(statsOptions(ctx, host), "does %s run the VM?", host), onHost.DomainState, uuid).Get(ctx, &state)
	return state, err
}

// destroyStray ends the stray copy on its host and says so at error level.
func destroyStray(ctx workflow.Context, s types.StrayCopy, alert types.Event) (string, error) {
	if err := workflow.ExecuteActivity(says(hostOptions(ctx, s.Host), "destroy the stray copy of %s on %s: it runs on its owner %s", s.VM, s.Host, s.Owner),
		onHost.DestroyStray, s).Get(ctx, nil); err != nil {
		return "", fmt.Errorf("destroy stray copy of %s on %s: %w", s.VM, s.Host, err)
	}
	msg := fmt.Sprintf("%s ran on %s and on its owner %s: the copy on %s was destroyed", s.VM, s.Host, s.Owner, s.Host)
	awaitAll(ctx, notify(ctx, alert, types.EventHostAlert, msg))
	return msg, nil
}

// adoptStray gives the VM to the host where its only copy runs, and says so at error level.
func adoptStray(ctx workflow.Context, s types.StrayCopy, alert types.Event, owner types.DomainState) (string, error) {
	if err := workflow.ExecuteActivity(says(hostOptions(ctx, s.Host), "%s runs only on %s (%s: %s): it becomes %s's", s.VM, s.Host, s.Owner, owner, s.Host),
		onHost.AdoptStray, s).Get(ctx, nil); err != nil {
		return "", fmt.Errorf("adopt %s on %s: %w", s.VM, s.Host, err)
	}
	msg := fmt.Sprintf("%s ran only on %s while the catalog gave it to %s (%s there): it now belongs to %s", s.VM, s.Host, s.Owner, owner, s.Host)
	awaitAll(ctx, notify(ctx, alert, types.EventHostAlert, msg))
	return msg, nil
}
