package activities

import (
	"context"
	"time"
)

// PollUntil calls done at once, then again interval after each call returns, until done reports true (nil) or ctx
// ends (ctx's error). done decides what a failed look means: the callers wait out a host, a BMC or a server that
// does not answer yet, so an error there is one more look, not the end.
func PollUntil(ctx context.Context, interval time.Duration, done func() bool) error {
	for {
		if done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
