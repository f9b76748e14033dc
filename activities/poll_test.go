package activities_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"vmha/activities"
)

func TestPollUntilStopsWhenDone(t *testing.T) {
	calls := 0
	start := time.Now()
	err := activities.PollUntil(context.Background(), 10*time.Millisecond, func() bool {
		calls++
		return calls == 3
	})
	if err != nil {
		t.Fatalf("PollUntil: %v", err)
	}
	if calls != 3 {
		t.Errorf("done called %d times, want 3", calls)
	}
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Errorf("three looks took %s: want two intervals (20ms) between them", took)
	}
}

func TestPollUntilLooksAtOnce(t *testing.T) {
	start := time.Now()
	if err := activities.PollUntil(context.Background(), time.Hour, func() bool { return true }); err != nil {
		t.Fatalf("PollUntil: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("first look came after %s: want it at once", took)
	}
}

func TestPollUntilEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	err := activities.PollUntil(ctx, 10*time.Millisecond, func() bool {
		calls++
		if calls == 3 {
			cancel()
		}
		return false
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("PollUntil = %v, want the context's cancellation", err)
	}
	if calls != 3 {
		t.Errorf("done called %d times, want 3: none after the context ended", calls)
	}
}
