package activities

import (
	"context"
	"time"

	"go.temporal.io/sdk/activity"
)

// keepAliveEvery is how often keepAlive heartbeats (the SDK sends at most one per 0.8 x HeartbeatTimeout).
const keepAliveEvery = 500 * time.Millisecond

// keepAlive heartbeats the running activity until stop is called. With a HeartbeatTimeout in its options, a task
// handed to a worker that never runs it then times out after that timeout, not its whole StartToCloseTimeout, and
// is retried on another worker: a hung host's worker (kernel frozen, its connection to Temporal still open) keeps
// its pending polls, and Temporal hands them tasks of the queues every host serves (lab scenario i7_1: the recovery
// of a hung host waited 30 s for the catalog listing its own frozen worker had been given). Outside an activity
// (tests) it does nothing.
func keepAlive(ctx context.Context) (stop func()) {
	if !activity.IsActivity(ctx) {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(keepAliveEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	return func() { close(done) }
}
