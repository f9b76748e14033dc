package bmc_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"vmha/activities/bmc"
	"vmha/activities/bmc/bmctest"
	"vmha/types"
)

const password = "s3cret-pw"

func newIPMI(t *testing.T) *bmc.IPMI {
	return bmc.New(5*time.Second, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestPowerStatusOn(t *testing.T) {
	sim := bmctest.Start(t, password)
	state, err := newIPMI(t).PowerStatus(context.Background(), sim.Spec(), password)
	if err != nil || state != types.PowerOn {
		t.Fatalf("PowerStatus = %q, %v; want %q, nil", state, err, types.PowerOn)
	}
}

func TestPowerStatusOffBehindOurBack(t *testing.T) {
	sim := bmctest.Start(t, password)
	sim.SetPower(false)
	state, err := newIPMI(t).PowerStatus(context.Background(), sim.Spec(), password)
	if err != nil || state != types.PowerOff {
		t.Fatalf("PowerStatus = %q, %v; want %q, nil", state, err, types.PowerOff)
	}
}

func TestPowerOffTurnsChassisOff(t *testing.T) {
	sim := bmctest.Start(t, password)
	b := newIPMI(t)
	if err := b.PowerOff(context.Background(), sim.Spec(), password); err != nil {
		t.Fatalf("PowerOff: %v", err)
	}
	if sim.Power() {
		t.Fatal("chassis power still on after PowerOff")
	}
	state, err := b.PowerStatus(context.Background(), sim.Spec(), password)
	if err != nil || state != types.PowerOff {
		t.Fatalf("PowerStatus after PowerOff = %q, %v; want %q, nil", state, err, types.PowerOff)
	}
}

func TestPowerOffWhenAlreadyOff(t *testing.T) {
	sim := bmctest.Start(t, password)
	sim.SetPower(false)
	b := newIPMI(t)
	for i := range 2 {
		if err := b.PowerOff(context.Background(), sim.Spec(), password); err != nil {
			t.Fatalf("PowerOff #%d on a chassis that is off: %v", i+1, err)
		}
	}
	if sim.Power() {
		t.Fatal("chassis power on after PowerOff")
	}
}

func TestPowerOffRefusedButOffIsSuccess(t *testing.T) {
	sim := bmctest.Start(t, password)
	sim.RefusePowerOff(true)
	if err := newIPMI(t).PowerOff(context.Background(), sim.Spec(), password); err != nil {
		t.Fatalf("PowerOff refused by a BMC whose chassis then reads off: %v", err)
	}
	if sim.Power() {
		t.Fatal("chassis power still on")
	}
}

func TestPowerOffRefusedAndStillOnIsError(t *testing.T) {
	sim := bmctest.Start(t, password)
	sim.RefusePowerOff(false)
	err := newIPMI(t).PowerOff(context.Background(), sim.Spec(), password)
	if err == nil {
		t.Fatal("PowerOff succeeded although the BMC refused and the chassis is still on")
	}
	assertErrorNames(t, err, sim.Spec(), password)
	if !sim.Power() {
		t.Fatal("chassis went off although the harness kept it on")
	}
}

func TestWrongPasswordIsAuthFailed(t *testing.T) {
	sim := bmctest.Start(t, password)
	const wrong = "not-the-password"
	b := bmc.New(30*time.Second, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := b.PowerStatus(ctx, sim.Spec(), wrong)
	if state != types.PowerAuthFailed || !errors.Is(err, bmc.ErrAuthFailed) {
		t.Fatalf("PowerStatus with a wrong password = %q, %v; want %q and ErrAuthFailed", state, err, types.PowerAuthFailed)
	}
	if ctx.Err() != nil {
		t.Fatal("auth failure took until the test's deadline: it must fail on the first reply, not time out")
	}
	assertErrorNames(t, err, sim.Spec(), wrong)

	err = b.PowerOff(ctx, sim.Spec(), wrong)
	if !errors.Is(err, bmc.ErrAuthFailed) {
		t.Fatalf("PowerOff with a wrong password = %v; want ErrAuthFailed", err)
	}
	assertErrorNames(t, err, sim.Spec(), wrong)
	if !sim.Power() {
		t.Fatal("chassis went off although the password was wrong")
	}
}

func TestWrongUserIsAuthFailed(t *testing.T) {
	sim := bmctest.Start(t, password)
	spec := sim.Spec()
	spec.User = "nobody"
	state, err := bmc.New(5*time.Second, nil).PowerStatus(context.Background(), spec, password)
	if state != types.PowerAuthFailed || !errors.Is(err, bmc.ErrAuthFailed) {
		t.Fatalf("PowerStatus with an unknown user = %q, %v; want %q and ErrAuthFailed", state, err, types.PowerAuthFailed)
	}
	assertErrorNames(t, err, spec, password)
}

func TestNothingListeningIsUnreachable(t *testing.T) {
	spec := types.BMCSpec{Address: "127.0.0.1", Port: bmctest.FreeUDPPort(t), User: bmctest.User}
	b := bmc.New(2*time.Second, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := b.PowerStatus(ctx, spec, password)
	if state != types.PowerUnreachable || !errors.Is(err, bmc.ErrUnreachable) {
		t.Fatalf("PowerStatus with no BMC = %q, %v; want %q and ErrUnreachable", state, err, types.PowerUnreachable)
	}
	if ctx.Err() != nil {
		t.Fatal("PowerStatus outlived its own 2s timeout by the test's 10s deadline")
	}
	assertErrorNames(t, err, spec, password)
	if err := b.PowerOff(ctx, spec, password); !errors.Is(err, bmc.ErrUnreachable) {
		t.Fatalf("PowerOff with no BMC = %v; want ErrUnreachable", err)
	}
}

func TestSilentBMCIsUnreachableWithinTimeout(t *testing.T) {
	// A bound socket that never answers: the request is swallowed, as by a BMC cut off the network.
	silent := bmctest.SilentUDP(t)
	spec := types.BMCSpec{Address: "127.0.0.1", Port: silent, User: bmctest.User}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	state, err := bmc.New(500*time.Millisecond, nil).PowerStatus(ctx, spec, password)
	if state != types.PowerUnreachable || !errors.Is(err, bmc.ErrUnreachable) {
		t.Fatalf("PowerStatus with a silent BMC = %q, %v; want %q and ErrUnreachable", state, err, types.PowerUnreachable)
	}
	if ctx.Err() != nil {
		t.Fatal("PowerStatus outlived its own 500ms timeout by the test's 10s deadline")
	}
}

func assertErrorNames(t *testing.T, err error, spec types.BMCSpec, pw string) {
	t.Helper()
	msg := err.Error()
	if strings.Contains(msg, pw) {
		t.Errorf("error reveals the password: %s", msg)
	}
	if !strings.Contains(msg, spec.Address) || !strings.Contains(msg, spec.User) {
		t.Errorf("error does not name BMC %s and user %s: %s", spec.Address, spec.User, msg)
	}
}
