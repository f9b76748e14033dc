package bmc

import (
	"testing"

	"github.com/bougou/go-ipmi/pkg/command/chassis"

	"vmha/types"
)

// ipmi_sim cannot raise fault bits, so the mapping is checked on decoded responses.
func TestPowerStateTrustsPowerOnOverFaultBits(t *testing.T) {
	cases := []struct {
		name string
		s    chassis.GetChassisStatusResponse
		want types.PowerState
	}{
		{"on", chassis.GetChassisStatusResponse{PowerIsOn: true}, types.PowerOn},
		{"on with power fault", chassis.GetChassisStatusResponse{PowerIsOn: true, PowerFault: true, PowerControlFault: true}, types.PowerOn},
		{"off", chassis.GetChassisStatusResponse{}, types.PowerOff},
		{"off by power fault", chassis.GetChassisStatusResponse{PowerFault: true}, types.PowerFault},
		{"off by overload", chassis.GetChassisStatusResponse{PowerOverload: true}, types.PowerFault},
		{"off by interlock", chassis.GetChassisStatusResponse{InterLock: true}, types.PowerFault},
		{"off with control fault", chassis.GetChassisStatusResponse{PowerControlFault: true}, types.PowerFault},
	}
	for _, c := range cases {
		if got := powerState(&c.s); got != c.want {
			t.Errorf("%s: powerState = %q, want %q", c.name, got, c.want)
		}
	}
}
