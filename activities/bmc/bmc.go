// Package bmc reads and switches chassis power over IPMI 2.0 (RMCP+ "lanplus") with go-ipmi.
//
// Every call opens its own session and closes it before returning: calls are rare (a probe every few seconds
// at most), BMCs hold only a handful of sessions, and a session kept open across a BMC reboot goes stale.
package bmc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	ipmitypes "github.com/bougou/go-ipmi/pkg/types"

	"vmha/types"
)

// ErrAuthFailed marks errors where the BMC answered but refused the user, password or privilege.
var ErrAuthFailed = errors.New("BMC refused the credentials")

// ErrUnreachable marks errors where the BMC did not answer in time, or answered without a usable result.
var ErrUnreachable = errors.New("BMC unreachable")

// IPMI implements activities.PowerController.
type IPMI struct {
	timeout time.Duration
	logger  *slog.Logger
}

// New returns a controller whose every call, session setup and teardown included, ends within timeout.
func New(timeout time.Duration, logger *slog.Logger) *IPMI {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &IPMI{timeout: timeout, logger: logger}
}

// PowerStatus reads chassis power. A chassis that reports power on is PowerOn even with fault bits set: it may
// still be running VMs, and PowerFault lets recovery start them elsewhere.
func (b *IPMI) PowerStatus(ctx context.Context, spec types.BMCSpec, password string) (types.PowerState, error) {
	var state types.PowerState
	err := b.session(ctx, spec, password, func(ctx context.Context, c *client.Client) error {
		s, err := c.GetChassisStatus(ctx)
		if err != nil {
			return fmt.Errorf("get chassis status: %w", classify(err))
		}
		state = powerState(s)
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrAuthFailed) {
			return types.PowerAuthFailed, err
		}
		return types.PowerUnreachable, err
	}
	return state, nil
}

// PowerOff sends a hard chassis power-down unless the chassis already reads off. It does not wait for the power
// to drop: the caller polls PowerStatus.
func (b *IPMI) PowerOff(ctx context.Context, spec types.BMCSpec, password string) error {
	return b.session(ctx, spec, password, func(ctx context.Context, c *client.Client) error {
		s, err := c.GetChassisStatus(ctx)
		if err != nil {
			return fmt.Errorf("get chassis status before power-off: %w", classify(err))
		}
		if !s.PowerIsOn {
			b.logger.InfoContext(ctx, "chassis already off, no power-off sent", "bmc", addr(spec), "user", spec.User)
			return nil
		}
		if _, ctlErr := c.ChassisControl(ctx, chassis.ChassisControlPowerDown); ctlErr != nil {
			// Some BMCs refuse a power-down racing a power loss; what counts is that the chassis is off.
			if s, err := c.GetChassisStatus(ctx); err == nil && !s.PowerIsOn {
				b.logger.InfoContext(ctx, "power-off refused but chassis reads off", "bmc", addr(spec), "user", spec.User, "error", ctlErr)
				return nil
			}
			return fmt.Errorf("chassis control power down: %w", classify(ctlErr))
		}
		b.logger.InfoContext(ctx, "chassis power down sent", "bmc", addr(spec), "user", spec.User)
		return nil
	})
}

// session runs fn in a fresh authenticated session. Errors name the BMC and user, never the password.
func (b *IPMI) session(ctx context.Context, spec types.BMCSpec, password string, fn func(context.Context, *client.Client) error) error {
	where := fmt.Sprintf("bmc %s user %q", addr(spec), spec.User)
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()

	c, err := client.NewClient(spec.Address, port(spec), spec.User, password)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", where, ErrAuthFailed, err)
	}
	c.WithInterface(client.InterfaceLanplus)
	// ipmi_sim and some real BMCs do not implement Get Channel Cipher Suites, and asking costs ~10 s; suite 3
	// (HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) is the one every IPMI 2.0 BMC must support.
	c.WithCipherSuiteID(ipmitypes.CipherSuiteID3)

	if err := c.Connect(ctx); err != nil {
		// Only frees the socket: without a session there is nothing to close on the BMC, so don't wait for it.
		done, stop := context.WithCancel(ctx)
		stop()
		_ = c.Close(done)
		return fmt.Errorf("%s: open session: %w", where, classify(err))
	}
	defer func() {
		// The session must be closed even when fn ran out of time, or the BMC keeps it until its idle timeout.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout(b.timeout))
		defer ccancel()
		if err := c.Close(cctx); err != nil {
			b.logger.DebugContext(ctx, "close IPMI session", "bmc", addr(spec), "user", spec.User, "error", err)
		}
	}()
	if err := fn(ctx, c); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

// closeTimeout bounds the Close Session exchange; it runs after the call's own deadline may have passed.
func closeTimeout(timeout time.Duration) time.Duration {
	return min(timeout, time.Second)
}

// authStatuses are the RMCP+ status codes a BMC answers when it knows us but will not let us in.
var authStatuses = []ipmitypes.RmcpStatusCode{
	ipmitypes.RmcpStatusCodeInvalidRole,
	ipmitypes.RmcpStatusCodeUnauthorizedRoleOfPriLevel,
	ipmitypes.RmcpStatusCodeInvalidNameLength,
	ipmitypes.RmcpStatusCodeUnauthorizedName,
	ipmitypes.RmcpStatusCodeUnauthorizedGUID,
	ipmitypes.RmcpStatusCodeInvalidIntegrityCheckValue,
}

// classify marks err with ErrAuthFailed or ErrUnreachable. go-ipmi's Connect flattens the errors of its
// cipher-suite attempts with %v, so errors.Is cannot see them; matching go-ipmi's own error texts can.
func classify(err error) error {
	msg := err.Error()
	auth := errors.Is(err, client.ErrRAKPAuthentication) || strings.Contains(msg, client.ErrRAKPAuthentication.Error())
	for _, code := range authStatuses {
		var rs *ipmitypes.RmcpStatusError
		if errors.As(err, &rs) && rs.StatusCode() == code || strings.Contains(msg, ipmitypes.NewRmcpStatusError(code).Error()) {
			auth = true
		}
	}
	if re, ok := ipmitypes.IsResponseError(err); ok && re.CompletionCode() == ipmitypes.CodeInsufficientPrivilege {
		auth = true
	}
	if auth {
		return fmt.Errorf("%w: %w", ErrAuthFailed, err)
	}
	return fmt.Errorf("%w: %w", ErrUnreachable, err)
}

// powerState trusts "power is on" over every fault bit: only a chassis that is not on may be reported as
// faulted, because PowerFault, like PowerOff, lets recovery start the host's VMs elsewhere.
func powerState(s *chassis.GetChassisStatusResponse) types.PowerState {
	switch {
	case s.PowerIsOn:
		return types.PowerOn
	case s.PowerFault || s.PowerOverload || s.InterLock || s.PowerControlFault:
		return types.PowerFault
	default:
		return types.PowerOff
	}
}

func port(spec types.BMCSpec) int {
	if spec.Port == 0 {
		return types.DefaultBMCPort
	}
	return spec.Port
}

func addr(spec types.BMCSpec) string {
	return fmt.Sprintf("%s:%d", spec.Address, port(spec))
}
