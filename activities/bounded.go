package activities

import (
	"context"
	"fmt"
	"time"
)

// Bounded runs one filesystem operation on the share with a timeout. A hung NFS mount blocks in the kernel where
// no context reaches, so the operation runs in its own goroutine and the caller stops waiting when the timeout or
// ctx ends. On a true hang that goroutine leaks until the share answers: the price of not hanging the worker.
// A zero timeout leaves only ctx's deadline.
func Bounded[T any](ctx context.Context, timeout time.Duration, what string, op func() (T, error)) (T, error) {
	cancel := context.CancelFunc(func() {})
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := op()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			var zero T
			return zero, fmt.Errorf("%s: %w", what, r.err)
		}
		return r.v, nil
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("%s: no answer within %s: %w", what, timeout, ctx.Err())
	}
}
