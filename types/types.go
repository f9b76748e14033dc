// Package types holds the values that cross the boundary between workflows, activities, workers and the CLI.
// Everything here ends up in Temporal histories, which are stored in plain form: no field may hold a secret.
package types

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// HostSpec is one hypervisor as the inventory file describes it. The BMC password is only named here
// (env var or file); workers resolve it, so it never reaches a workflow input, result or memo.
type HostSpec struct {
	Name string `json:"name" yaml:"name"`
	// Address is the management address probed for reachability (IP or DNS name).
	Address string `json:"address" yaml:"address"`
	// ProbePort is the TCP port whose connect proves the host reachable (default: libvirt's 16509).
	ProbePort  int               `json:"probePort,omitempty" yaml:"probePort,omitempty"`
	LibvirtURI string            `json:"libvirtURI" yaml:"libvirtURI"`
	BMC        BMCSpec           `json:"bmc" yaml:"bmc"`
	Labels     map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Capacity   Capacity          `json:"capacity,omitempty" yaml:"capacity,omitempty"`
}

// BMCSpec says how to reach a host's BMC over IPMI lanplus.
type BMCSpec struct {
	Address string `json:"address" yaml:"address"`
	Port    int    `json:"port,omitempty" yaml:"port,omitempty"`
	User    string `json:"user" yaml:"user"`
	// Exactly one of PasswordEnv and PasswordFile names where the worker finds the password.
	PasswordEnv  string `json:"passwordEnv,omitempty" yaml:"passwordEnv,omitempty"`
	PasswordFile string `json:"passwordFile,omitempty" yaml:"passwordFile,omitempty"`
}

// Capacity overrides what libvirt reports for a host; zero means "use what libvirt reports".
type Capacity struct {
	MemoryMiB int64 `json:"memoryMiB,omitempty" yaml:"memoryMiB,omitempty"`
	VCPUs     int   `json:"vcpus,omitempty" yaml:"vcpus,omitempty"`
}

// DefaultProbePort is libvirtd's TCP port.
const DefaultProbePort = 16509

// DefaultBMCPort is the IPMI RMCP+ port.
const DefaultBMCPort = 623

// ProbeAddress is the host:port whose TCP connect proves the host reachable.
func (h HostSpec) ProbeAddress() string {
	port := h.ProbePort
	if port == 0 {
		port = DefaultProbePort
	}
	return fmt.Sprintf("%s:%d", h.Address, port)
}

// HostState is where a host's monitor stands. It is also the VmhaHostState search attribute.
type HostState string

const (
	// HostHealthy: reachable, BMC reports power on, its worker polls.
	HostHealthy HostState = "healthy"
	// HostSuspect: some probes failed or disagree; watched closer, nothing is done yet.
	HostSuspect HostState = "suspect"
	// HostIsolated: unreachable while its BMC says power on. Its VMs may still write their disks: alert, never recover.
	HostIsolated HostState = "isolated"
	// HostUnknown: unreachable and its BMC cannot be asked (down or refusing our credentials): alert, and again every
	// VMHA_UNKNOWN_REMINDER, until an operator confirms the host is off (or its armed watchdog's timeout has passed).
	HostUnknown HostState = "unknown"
	// HostHung: unreachable, power on, and its storage heartbeat stopped: it no longer writes its disks. vmha fences
	// it (hard power-off, confirmed by the BMC), then it is dead; or only alerts when VMHA_FENCE_HUNG is off.
	HostHung HostState = "hung"
	// HostStorageLost: reachable but its storage heartbeat stopped: it lost the share. An alert; fenced and
	// recovered only when VMHA_FENCE_STORAGE_LOST is on.
	HostStorageLost HostState = "storage-lost"
	// HostDead: unreachable AND power off or fault, or fenced by vmha. Recovery starts.
	HostDead HostState = "dead"
	// HostRecovering: its HA VMs are being started elsewhere.
	HostRecovering HostState = "recovering"
	// HostRecovered: every HA VM runs elsewhere; the host stays out of placement until it is healthy again.
	HostRecovered HostState = "recovered"
	// HostRecoveryFailed: some HA VM of the dead host runs nowhere (no capacity, every target failed, an unreadable
	// catalog entry). vmha keeps retrying while the catalog still gives those VMs to this host, and restarts them on
	// the host itself when it comes back healthy.
	HostRecoveryFailed HostState = "recovery-failed"
	// HostMaintenance: an operator paused the monitor; nothing is recovered while it lasts.
	HostMaintenance HostState = "maintenance"
)

// ConfirmedOff is true for the states entered only once the host's power was confirmed off (or its watchdog's
// guarantee passed, or an operator confirmed it), and left when it is back.
func (s HostState) ConfirmedOff() bool {
	switch s {
	case HostDead, HostRecovering, HostRecovered, HostRecoveryFailed:
		return true
	}
	return false
}

// AllHostStates lists every state, for metrics and validation.
var AllHostStates = []HostState{HostHealthy, HostSuspect, HostIsolated, HostUnknown, HostHung, HostStorageLost, HostDead,
	HostRecovering, HostRecovered, HostRecoveryFailed, HostMaintenance}

// Reachability summarises consecutive network probe results against the configured miss thresholds.
type Reachability string

const (
	ReachUp      Reachability = "up"      // fewer misses than MissesBeforeSuspect
	ReachFailing Reachability = "failing" // suspect threshold reached, dead threshold not yet
	ReachDown    Reachability = "down"    // MissesBeforeDead misses with power confirmed off, else MissesBeforeUnreachable
)

// PowerState is what the BMC said about chassis power.
type PowerState string

const (
	PowerOn          PowerState = "on"
	PowerOff         PowerState = "off"
	PowerFault       PowerState = "fault"
	PowerUnreachable PowerState = "unreachable" // no answer from the BMC
	PowerAuthFailed  PowerState = "auth-failed" // the BMC refused our credentials
)

// Probe is one classified view of a host. The watch activity returns only when Key() changes,
// so a steady host costs no history.
type Probe struct {
	Reach       Reachability `json:"reach"`
	Power       PowerState   `json:"power"`
	WorkerAlive bool         `json:"workerAlive"`
	// Heartbeat is the verdict on the host's storage heartbeat; Watchdog the self-fencing guarantee its last
	// heartbeat announced.
	Heartbeat HeartbeatVerdict `json:"heartbeat,omitempty"`
	Watchdog  WatchdogState    `json:"watchdog,omitempty"`
	// BeatCounter and BeatAge carry the heartbeat's last counter, and how long before this probe the controller saw
	// it change, to the next watch, so a verdict survives the watch's restart. An age, not a time: the next watch
	// may run on another controller replica, whose clock may differ.
	BeatCounter uint64        `json:"beatCounter,omitempty"`
	BeatAge     time.Duration `json:"beatAge,omitempty"`
	// Unreachable is how long before At the network probes began failing without a success since (zero while the
	// network answers). An age, not a time, like BeatAge.
	Unreachable time.Duration `json:"unreachable,omitempty"`
	// Detail carries the last probe errors for people; it never triggers a change on its own.
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at"`
}

// Key is the part of a probe whose change is worth a workflow decision.
func (p Probe) Key() string {
	return fmt.Sprintf("%s/%s/%t/%s", p.Reach, p.Power, p.WorkerAlive, p.Heartbeat)
}

// HAPolicy is what a VM's vmha metadata element in its domain XML says.
type HAPolicy struct {
	Enabled  bool  `json:"enabled"`
	Priority int   `json:"priority"` // higher recovers first
	Rules    Rules `json:"rules"`
}

// Rules restrict where a VM may run. All rules hold at once. Labels are written "key=value".
type Rules struct {
	PinHosts          []string `json:"pinHosts,omitempty"`
	PinLabels         []string `json:"pinLabels,omitempty"`
	AvoidHosts        []string `json:"avoidHosts,omitempty"`
	AvoidLabels       []string `json:"avoidLabels,omitempty"`
	AntiAffinityGroup string   `json:"antiAffinityGroup,omitempty"`
}

// VMPhase is where a VM stands in the ownership protocol (README, "Who owns a VM").
type VMPhase string

const (
	// PhaseOwned: the owner runs the VM, or restarts it when it comes back. The normal phase.
	PhaseOwned VMPhase = ""
	// PhaseStarting: the owner claimed the VM (from ClaimedFrom, or by creating it) and is defining and starting
	// it; nothing else may start it until the claim is committed or released.
	PhaseStarting VMPhase = "starting"
)

// Ownership is one version of a VM's catalog entry: the fencing token every host activity carries. An activity
// whose token no longer matches the catalog refuses to act (CatalogMoved).
type Ownership struct {
	UUID       string `json:"uuid"`
	Owner      string `json:"owner"`
	Generation int64  `json:"generation"`
}

// Token is the record's current ownership.
func (r VMRecord) Token() Ownership {
	return Ownership{UUID: r.UUID, Owner: r.Owner, Generation: r.Generation}
}

// VMRecord is a catalog entry without its XML: the XML may hold secure data (graphics passwords, secrets)
// and so only travels between the share and the hypervisor workers, never through a workflow.
type VMRecord struct {
	UUID       string    `json:"uuid"`
	Name       string    `json:"name"`
	Owner      string    `json:"owner"`
	Generation int64     `json:"generation"`
	MemoryMiB  int64     `json:"memoryMiB"`
	VCPUs      int       `json:"vcpus"`
	Policy     HAPolicy  `json:"policy"`
	UpdatedAt  time.Time `json:"updatedAt"`
	// Phase and ClaimedFrom: see VMPhase.
	Phase       VMPhase `json:"phase,omitempty"`
	ClaimedFrom string  `json:"claimedFrom,omitempty"`
}

// SortByPriority orders VMs for recovery: higher priority first, then by name so the order is stable.
func SortByPriority(vms []VMRecord) {
	sort.SliceStable(vms, func(i, j int) bool {
		if vms[i].Policy.Priority != vms[j].Policy.Priority {
			return vms[i].Policy.Priority > vms[j].Policy.Priority
		}
		return vms[i].Name < vms[j].Name
	})
}

// DomainState is libvirt's domain state reduced to what recovery needs.
type DomainState string

const (
	DomainRunning  DomainState = "running"
	DomainShutoff  DomainState = "shutoff"
	DomainOther    DomainState = "other"
	DomainNotFound DomainState = "not-found"
	// DomainMigrating is a domain paused (or running post-copy) while a live migration in or out is in progress:
	// neither a stray copy nor the settled one.
	DomainMigrating DomainState = "migrating"
)

// HostStats is what a host's own worker reads from libvirt for the scheduler.
type HostStats struct {
	Host string `json:"host"`
	// CPULoad is the fraction of the host's CPU time busy over the last sample (0..1).
	CPULoad        float64 `json:"cpuLoad"`
	CPUs           int     `json:"cpus"`
	MemoryTotalMiB int64   `json:"memoryTotalMiB"`
	MemoryFreeMiB  int64   `json:"memoryFreeMiB"`
	// VCPUsAllocated and MemoryAllocatedMiB sum the running domains, for overcommit checks.
	VCPUsAllocated     int   `json:"vcpusAllocated"`
	MemoryAllocatedMiB int64 `json:"memoryAllocatedMiB"`
	// AntiAffinityGroups of the HA domains running there.
	AntiAffinityGroups []string `json:"antiAffinityGroups,omitempty"`
	// Running lists the UUIDs of the domains counted above, so the scheduler never counts a VM twice: once in
	// these stats and once more as a reservation.
	Running         []string  `json:"running,omitempty"`
	SharedStorageOK bool      `json:"sharedStorageOK"`
	SampledAt       time.Time `json:"sampledAt"`
}

// Candidate is one host as the scheduler sees it when placing a VM.
type Candidate struct {
	Spec  HostSpec  `json:"spec"`
	State HostState `json:"state"`
	Stats HostStats `json:"stats"`
}

// Policy is the controller's configured recovery and placement policy, read once per workflow through an
// activity so that replays see the same values.
type Policy struct {
	RecoveryConcurrency int           `json:"recoveryConcurrency"`
	OvercommitRatio     float64       `json:"overcommitRatio"`
	HostReserveMiB      int64         `json:"hostReserveMiB"`
	FenceTimeout        time.Duration `json:"fenceTimeout"`
	// FenceHung fences a hung host (then recovers it); off, a hung host is only an alert.
	FenceHung bool `json:"fenceHung"`
	// FenceStorageLost fences and recovers a host that lost the shared storage; off (the default), only an alert.
	FenceStorageLost bool `json:"fenceStorageLost"`
	// UnknownReminder is how often users are told again about a host nobody can tell is off.
	UnknownReminder time.Duration `json:"unknownReminder"`
}

// PlacementRequest asks the scheduler for a target. ReservationID makes a retried request idempotent. The
// scheduler places with its own look at the hosts (PlacementHost), so a request's size does not depend on the
// cluster's.
type PlacementRequest struct {
	ReservationID string   `json:"reservationID"`
	VM            VMRecord `json:"vm"`
	FailedHost    string   `json:"failedHost,omitempty"`
	Exclude       []string `json:"exclude,omitempty"`
	// Candidates is set only by recoveries that release fd09219 started, which took their own snapshot of the
	// cluster; the scheduler then places with it, as that release did.
	Candidates []Candidate `json:"candidates,omitempty"`
	// FreshAfter asks for hosts looked at after this instant: a VM that found no target looks again.
	FreshAfter time.Time `json:"freshAfter,omitzero"`
	Policy     Policy    `json:"policy"`
}

// Placement is the scheduler's answer. Rejected says why hosts were not chosen, naming a few of them;
// RejectedBy counts every rejected host by reason, so an answer stays small in a cluster of thousands.
type Placement struct {
	Host          string            `json:"host,omitempty"`
	ReservationID string            `json:"reservationID"`
	Rejected      map[string]string `json:"rejected,omitempty"`
	RejectedBy    map[string]int    `json:"rejectedBy,omitempty"`
}

// PlacementHost is a host as placement needs it and no more: no address, no BMC, and of the domains it runs only
// those the scheduler holds reservations for (so none is counted twice). The scheduler keeps a list of them in its
// history, refreshed every few seconds while it places.
type PlacementHost struct {
	Name     string            `json:"name"`
	State    HostState         `json:"state"`
	Labels   map[string]string `json:"labels,omitempty"`
	Capacity Capacity          `json:"capacity,omitzero"`
	// Stats is zero for a host whose stats the controller could not take from its storage heartbeat.
	Stats HostStats `json:"stats,omitzero"`
}

// Candidate is the host in the form placement takes.
func (h PlacementHost) Candidate() Candidate {
	return Candidate{Spec: HostSpec{Name: h.Name, Labels: h.Labels, Capacity: h.Capacity}, State: h.State, Stats: h.Stats}
}

// Reservation is capacity the scheduler promised to a VM that libvirt's stats may not show yet.
type Reservation struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	VMUUID    string    `json:"vmUUID"`
	MemoryMiB int64     `json:"memoryMiB"`
	VCPUs     int       `json:"vcpus"`
	Group     string    `json:"group,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	// ReleasedAt is set once the VM runs: from then on stats sampled after this instant include it.
	ReleasedAt time.Time `json:"releasedAt,omitempty"`
}

// EventKind names a notification.
type EventKind string

const (
	EventHostState        EventKind = "host.state"
	EventRecoveryStarted  EventKind = "vm.recovery.started"
	EventRecoveryDone     EventKind = "vm.recovery.done"
	EventRecoveryFailed   EventKind = "vm.recovery.failed"
	EventHostRecoveryDone EventKind = "host.recovery.done"
	// EventHostAlert is something about a host that a person must look at (a fenced signal the BMC contradicts).
	EventHostAlert EventKind = "host.alert"
	// EventCatalogUnreadable names a catalog file that a recovery could not read: a VM may be missing from it.
	EventCatalogUnreadable EventKind = "catalog.unreadable"
)

// Event is what users are told: webhook body, log line and metrics source.
type Event struct {
	Kind       EventKind `json:"kind"`
	Host       string    `json:"host"`
	From       HostState `json:"from,omitempty"`
	To         HostState `json:"to,omitempty"`
	VM         string    `json:"vm,omitempty"`
	VMUUID     string    `json:"vmUUID,omitempty"`
	Target     string    `json:"target,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	WorkflowID string    `json:"workflowID,omitempty"`
	At         time.Time `json:"at"`
	// Seconds is the detection time for a host.state event into dead, the recovery time of one VM for
	// vm.recovery.done, and the time from death to the end of a recovery round for host.recovery.done.
	Seconds float64 `json:"seconds,omitempty"`
}

// CreateVMRequest is the input of CreateVM.
type CreateVMRequest struct {
	Name string `json:"name"`
	// Image is a qcow2 or raw image on the shared storage; the VM gets its own overlay beside it.
	Image     string   `json:"image"`
	VCPUs     int      `json:"vcpus"`
	MemoryMiB int64    `json:"memoryMiB"`
	Policy    HAPolicy `json:"policy"`
}

// Validate names the first bad field.
func (r CreateVMRequest) Validate() error {
	switch {
	case !ValidName(r.Name):
		return fmt.Errorf("name %q: want 1-63 letters, digits, '-', '_' or '.'", r.Name)
	case strings.TrimSpace(r.Image) == "":
		return fmt.Errorf("image %q: want a path on the shared storage", r.Image)
	case r.VCPUs < 1 || r.VCPUs > 256:
		return fmt.Errorf("vcpus %d: want 1..256", r.VCPUs)
	case r.MemoryMiB < 16:
		return fmt.Errorf("memoryMiB %d: want at least 16", r.MemoryMiB)
	}
	return nil
}

// ValidName says whether s may name a host or VM (it goes into workflow IDs and file names).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// FailoverRequest is the input of ManualFailover, typed by operators on the Temporal CLI.
type FailoverRequest struct {
	Host string `json:"host"`
	// Fence must be true to fail over a host whose power is on: vmha then powers it off and waits for the BMC
	// to report off before any VM starts elsewhere.
	Fence  bool   `json:"fence,omitempty"`
	Reason string `json:"reason,omitempty"`
	// ConfirmPoweredOff is an operator's word that the host is off, for a host whose BMC cannot be asked: its VMs
	// are then recovered. It needs a Reason and By, which stay in the history.
	ConfirmPoweredOff bool `json:"confirmPoweredOff,omitempty"`
	// By names who asked (the CLI fills in user@machine).
	By string `json:"by,omitempty"`
}

// VMOutcome is how the recovery of one VM ended.
type VMOutcome struct {
	VM        string `json:"vm"`
	UUID      string `json:"uuid"`
	Target    string `json:"target,omitempty"`
	Recovered bool   `json:"recovered"`
	Reason    string `json:"reason,omitempty"`
	Attempts  int    `json:"attempts"`
}

// RecoveryResult summarises one round of a host recovery.
type RecoveryResult struct {
	Host     string      `json:"host"`
	Incident string      `json:"incident"`
	Round    int         `json:"round"`
	Outcomes []VMOutcome `json:"outcomes"`
	// Unreadable lists catalog files the round could not read: each may be an HA VM left down.
	Unreadable []UnreadableEntry `json:"unreadable,omitempty"`
}

// LeftBehind lists the VMs of the round that run nowhere.
func (r RecoveryResult) LeftBehind() []VMOutcome {
	var out []VMOutcome
	for _, o := range r.Outcomes {
		if !o.Recovered {
			out = append(out, o)
		}
	}
	return out
}

// Complete is true when every VM was recovered and every catalog file was read: only then is the host recovered.
func (r RecoveryResult) Complete() bool {
	return len(r.LeftBehind()) == 0 && len(r.Unreadable) == 0
}

// Summary says how many of the host's VMs were recovered, for notifications and operators.
func (r RecoveryResult) Summary() string {
	s := fmt.Sprintf("%d of %d VMs recovered", len(r.Outcomes)-len(r.LeftBehind()), len(r.Outcomes))
	if len(r.Unreadable) > 0 {
		s += fmt.Sprintf(", %d catalog files unreadable", len(r.Unreadable))
	}
	return s
}

// UnreadableEntry is a catalog file that could not be read as a VM entry; it is reported, never silently skipped.
type UnreadableEntry struct {
	File   string `json:"file"`
	Reason string `json:"reason"`
}

// VMListing is the HA VMs the catalog lists, with the files it could not read.
type VMListing struct {
	VMs        []VMRecord        `json:"vms"`
	Unreadable []UnreadableEntry `json:"unreadable,omitempty"`
}

// StrayCopy is a VM found running on a host the catalog does not give it to.
type StrayCopy struct {
	VM    string `json:"vm"`
	UUID  string `json:"uuid"`
	Host  string `json:"host"`
	Owner string `json:"owner"`
	// Generation is the catalog's version when the stray was found: the only version it may be adopted from.
	Generation int64 `json:"generation"`
}

// HostVMs is how many HA VMs the catalog gives to one host, and how many of them are not running. Down is -1 when
// nobody can tell (the host answers no stats, and its power is not confirmed off).
type HostVMs struct {
	Host string `json:"host"`
	VMs  int    `json:"vms"`
	Down int    `json:"down"`
}

// HAReport is the cluster's HA VMs by owner, for `vmha hosts`.
type HAReport struct {
	Hosts      []HostVMs `json:"hosts"`
	Unreadable int       `json:"unreadable,omitempty"`
}

// ByHost indexes the report by host name.
func (r HAReport) ByHost() map[string]HostVMs {
	by := make(map[string]HostVMs, len(r.Hosts))
	for _, h := range r.Hosts {
		by[h.Host] = h
	}
	return by
}
