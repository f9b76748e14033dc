// Package activities is vmha's I/O: thin Temporal activities over the interfaces below. Each interface has one
// real implementation in a subpackage (bmc, hypervisor, catalog, notify), so activities can be tested with the
// real thing (libvirt's test driver, an IPMI BMC on loopback) or with a fake.
package activities

import (
	"context"
	"errors"

	"vmha/types"
)

// PowerController talks IPMI to a BMC. Implemented by activities/bmc with go-ipmi over lanplus.
type PowerController interface {
	// PowerStatus reads chassis power. On failure it returns PowerUnreachable or PowerAuthFailed with the error.
	PowerStatus(ctx context.Context, spec types.BMCSpec, password string) (types.PowerState, error)
	// PowerOff is a hard chassis power-off: never a cycle or soft (ACPI) off, which can report success while the
	// host still runs. A BMC refusing because the chassis is already off is not an error.
	PowerOff(ctx context.Context, spec types.BMCSpec, password string) error
}

// Hypervisor is the local libvirt of one host. Implemented by activities/hypervisor.
// Every method is idempotent, because activities are retried: starting a running domain, destroying a stopped
// one or undefining a missing one succeeds.
type Hypervisor interface {
	// Define defines (or redefines) a persistent domain from XML and returns its UUID. Never autostarted.
	Define(ctx context.Context, xml string) (uuid string, err error)
	Start(ctx context.Context, uuid string) error
	Destroy(ctx context.Context, uuid string) error
	Undefine(ctx context.Context, uuid string) error
	State(ctx context.Context, uuid string) (types.DomainState, error)
	// InactiveXML is the persistent definition including secure data (virsh dumpxml --inactive --security-info).
	InactiveXML(ctx context.Context, uuid string) (string, error)
	// Domains lists every defined domain of the host.
	Domains(ctx context.Context) ([]Domain, error)
	// Stats reads node CPU load and memory and sums the running domains.
	Stats(ctx context.Context) (types.HostStats, error)
	// DisableAutostart turns libvirt's autostart of a domain off and reports whether it was on. Idempotent: a
	// domain without autostart, or a missing one, is left as it is (false, nil).
	DisableAutostart(ctx context.Context, uuid string) (wasOn bool, err error)
	// WatchDefinitions calls fn for every domain defined, undefined, started, stopped, migrated in or out, or
	// whose vmha metadata changed on the host, until ctx ends.
	WatchDefinitions(ctx context.Context, fn func(DomainEvent)) error
	Close() error
}

// Domain is one libvirt domain as listed on a host.
type Domain struct {
	UUID  string
	Name  string
	State types.DomainState
}

// DomainEventKind says what happened to a domain.
type DomainEventKind string

const (
	DomainDefined   DomainEventKind = "defined"
	DomainUndefined DomainEventKind = "undefined"
	DomainStarted   DomainEventKind = "started"
	DomainStopped   DomainEventKind = "stopped"
	// DomainMigratedIn: the domain arrived here by live migration and runs (resumed once its memory is in); also a
	// source that resumed here after its outgoing migration failed.
	DomainMigratedIn DomainEventKind = "migrated-in"
	// DomainMigratedOut: the domain stopped here because it migrated to another host.
	DomainMigratedOut DomainEventKind = "migrated-out"
	// DomainMetadataChanged: the domain's vmha metadata element was set, changed or removed (virsh metadata,
	// live or --config).
	DomainMetadataChanged DomainEventKind = "metadata-changed"
)

// DomainEvent is one libvirt domain event.
type DomainEvent struct {
	UUID string
	Name string
	Kind DomainEventKind
	// Detail is libvirt's detail of the event (e.g. "booted", "migrated", "destroyed", or the metadata's namespace),
	// for logs only.
	Detail string
}

// ErrNotFound is returned by Catalog.Get for an unknown VM.
var ErrNotFound = errors.New("not found")

// CatalogEntry is a VM's record plus its inactive domain XML (with secure data). It stays between the share and
// the hypervisor workers; workflows only ever see the VMRecord part.
type CatalogEntry struct {
	types.VMRecord
	XML string `json:"xml"`
}

// ErrShareNotMounted is wrapped by every Catalog call on a host that does not see the share's marker
// (<share>/vmha/share.json, written by `vmha share init`): the share is not mounted there (a failed `nofail`
// mount leaves an empty local directory) or was never prepared. Such a host must not answer for the catalog.
var ErrShareNotMounted = errors.New("share not mounted")

// Catalog is the shared-storage record of every HA VM's domain XML. Implemented by activities/catalog.
// Every call has a timeout: a hung NFS mount must not hang a worker. Every call first checks the share's marker
// and fails with an error wrapping ErrShareNotMounted without it; no call creates a directory.
type Catalog interface {
	Get(ctx context.Context, uuid string) (CatalogEntry, error)
	// Update is the only way an entry is written or removed: change sees the current entry (exists is false for
	// a new one) and says what to do with it, and no other writer on any host changes the entry in between.
	// Keep and Remove of a missing entry return ErrNotFound; an error from change is returned as is.
	Update(ctx context.Context, uuid string, change ChangeFunc) (CatalogEntry, error)
	// List returns every readable entry and reports every file it could not read as one.
	List(ctx context.Context) (Listing, error)
	// Writable checks that the share is mounted and answers within the timeout.
	Writable(ctx context.Context) error
}

// ChangeFunc decides one catalog update: it may modify e and says whether to write it, remove it or keep it.
type ChangeFunc func(e *CatalogEntry, exists bool) (Change, error)

// Change is what an update does with the entry.
type Change int

const (
	Keep Change = iota
	Write
	Remove
)

// Listing is the catalog as listed: the entries read, ordered by UUID, and the files that could not be read as
// entries (each may be an HA VM), ordered by file name.
type Listing struct {
	Entries    []CatalogEntry
	Unreadable []types.UnreadableEntry
}

// HeartbeatReader reads the storage heartbeat a host's worker renews on the share,
// <share>/vmha/heartbeats/<host>.json. Implemented by activities/heartbeat. Every call has a timeout, checks the
// share's marker first (an error wrapping ErrShareNotMounted without it) and refuses a host name that is not
// types.ValidName. A host that never wrote a heartbeat is an error wrapping ErrNotFound.
type HeartbeatReader interface {
	ReadHeartbeat(ctx context.Context, host string) (types.Heartbeat, error)
}

// Notifier tells users: webhook, log, metrics. Implemented by activities/notify.
type Notifier interface {
	Notify(ctx context.Context, e types.Event) error
}
