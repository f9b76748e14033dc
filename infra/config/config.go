// Package config reads vmha's settings from the environment (VMHA_*) with envconfig.
// One struct serves every role so `vmha help env` can list all of them in one place.
package config

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Prefix is the environment prefix of every setting.
const Prefix = "VMHA"

// Settings is every knob of vmha. Each role reads only the ones it needs.
type Settings struct {
	// Temporal connection. vmha server listens on TemporalAddress; every other role dials it.
	TemporalAddress string `envconfig:"TEMPORAL_ADDRESS" default:"127.0.0.1:7233" desc:"host:port of the Temporal frontend (vmha server listens there)"`
	Namespace       string `envconfig:"NAMESPACE" default:"vmha" desc:"Temporal namespace"`
	TLSCert         string `envconfig:"TLS_CERT" desc:"client certificate file for an external Temporal (mTLS)"`
	TLSKey          string `envconfig:"TLS_KEY" desc:"client key file for an external Temporal (mTLS)"`
	TLSCA           string `envconfig:"TLS_CA" desc:"CA bundle that signed the Temporal server certificate"`
	TLSServerName   string `envconfig:"TLS_SERVER_NAME" desc:"server name to verify, when it differs from the address"`

	// Embedded server (vmha server).
	DataDir string `envconfig:"DATA_DIR" default:"/var/lib/vmha" desc:"where the embedded server keeps its SQLite file"`
	UIPort  int    `envconfig:"UI_PORT" default:"8233" desc:"port of the embedded Temporal Web UI (0: no UI)"`
	// EmbeddedController runs the controller worker inside vmha server.
	EmbeddedController bool `envconfig:"EMBEDDED_CONTROLLER" default:"true" desc:"run the controller worker inside vmha server"`
	// mTLS and authorization of vmha server's frontend (README "Security"): all three or none.
	ServerTLSCert     string `envconfig:"SERVER_TLS_CERT" desc:"vmha server: the frontend's certificate (vmha certs issue --role server); with SERVER_TLS_KEY and SERVER_TLS_CLIENT_CA the frontend requires client certificates and authorizes each call by the role they name"`
	ServerTLSKey      string `envconfig:"SERVER_TLS_KEY" desc:"vmha server: the key of SERVER_TLS_CERT"`
	ServerTLSClientCA string `envconfig:"SERVER_TLS_CLIENT_CA" desc:"vmha server: CA bundle client certificates must chain to (the ca.pem of vmha certs ca); it must also have issued SERVER_TLS_CERT"`
	ServerPlaintext   bool   `envconfig:"SERVER_PLAINTEXT" default:"false" desc:"vmha server: serve plain gRPC, without TLS or authorization, on a non-loopback TEMPORAL_ADDRESS (for a lab behind a firewall only; loopback needs no TLS)"`
	UIAddress         string `envconfig:"UI_ADDRESS" default:"127.0.0.1" desc:"IP address the embedded Web UI listens on"`
	UIWriteActions    bool   `envconfig:"UI_WRITE_ACTIONS" default:"false" desc:"let the embedded Web UI terminate, cancel, signal, reset and start workflows"`

	// Temporal cluster node (vmha server with PERSISTENCE=postgres; README "Deploying on real hosts").
	Persistence             string `envconfig:"PERSISTENCE" default:"sqlite" desc:"vmha server's Temporal: sqlite (one machine, file in DATA_DIR) or postgres (a node of a Temporal cluster on PostgreSQL)"`
	ClusterBroadcastAddress string `envconfig:"CLUSTER_BROADCAST_ADDRESS" desc:"postgres: the IP the other nodes reach this one on (default: the host of TEMPORAL_ADDRESS; required when that is 0.0.0.0)"`
	HistoryShards           int32  `envconfig:"HISTORY_SHARDS" default:"16" desc:"postgres: Temporal history shards, fixed when the cluster first starts"`
	PostgresAddress         string `envconfig:"POSTGRES_ADDRESS" default:"127.0.0.1:5432" desc:"postgres: host:port of PostgreSQL, or several separated by commas (a primary and its standbys: vmha uses the one that accepts writes)"`
	PostgresUser            string `envconfig:"POSTGRES_USER" default:"temporal" desc:"postgres: user (needs CREATEDB, or the two databases created for it)"`
	PostgresPassword        string `envconfig:"POSTGRES_PASSWORD" desc:"postgres: password (prefer POSTGRES_PASSWORD_FILE); never logged"`
	PostgresPasswordFile    string `envconfig:"POSTGRES_PASSWORD_FILE" desc:"postgres: file holding the password (mode 0600)"`
	PostgresDatabase        string `envconfig:"POSTGRES_DATABASE" default:"temporal" desc:"postgres: Temporal's persistence database"`
	PostgresVisibilityDB    string `envconfig:"POSTGRES_VISIBILITY_DATABASE" default:"temporal_visibility" desc:"postgres: Temporal's visibility database"`
	PostgresTLSCA           string `envconfig:"POSTGRES_TLS_CA" desc:"postgres: CA file of the server's certificate: TLS, verifying the certificate and the host of POSTGRES_ADDRESS (empty: no TLS)"`

	// Controller worker.
	MetricsAddr   string `envconfig:"METRICS_ADDR" default:"127.0.0.1:9464" desc:"listen address of /metrics (empty: off)"`
	WebhookURL    string `envconfig:"WEBHOOK_URL" desc:"URL that receives every event as JSON (empty: off)"`
	WebhookSecret string `envconfig:"WEBHOOK_SECRET" desc:"shared secret of the X-Vmha-Signature HMAC-SHA256 header"`

	ProbeInterval           time.Duration `envconfig:"PROBE_INTERVAL" default:"100ms" desc:"time between two probes of a host"`
	ProbeTimeout            time.Duration `envconfig:"PROBE_TIMEOUT" default:"50ms" desc:"TCP connect timeout of the network probe (docs/bench-lab.md has the measured round trips it is chosen from)"`
	BMCTimeout              time.Duration `envconfig:"BMC_TIMEOUT" default:"1s" desc:"timeout of one IPMI exchange (PROBE_INTERVAL + max(2s, PROBE_TIMEOUT + POWER_CONFIRMATIONS x BMC_TIMEOUT) must be <= 4s)"`
	MissesBeforeSuspect     int           `envconfig:"MISSES_BEFORE_SUSPECT" default:"3" desc:"consecutive network misses that make a host suspect"`
	MissesBeforeDead        int           `envconfig:"MISSES_BEFORE_DEAD" default:"2" desc:"consecutive network misses that, with the BMC confirming power off or fault, make a host dead (>= 2)"`
	ProbeBudget             int           `envconfig:"PROBE_BUDGET" default:"4000" desc:"probes a second one controller replica spends on all its hosts (0: no limit): beyond PROBE_BUDGET x PROBE_INTERVAL hosts each is probed less often, every 2 s at most"`
	MissesBeforeUnreachable int           `envconfig:"MISSES_BEFORE_UNREACHABLE" default:"8" desc:"consecutive network misses that make a host whose power is on or unknown unreachable: isolated, hung or unknown"`
	PowerConfirmations      int           `envconfig:"POWER_CONFIRMATIONS" default:"2" desc:"equal BMC readings in a row before a power change counts"`
	WorkerGrace             time.Duration `envconfig:"WORKER_GRACE" default:"90s" desc:"a host worker not seen polling for this long counts as gone (>= 1m)"`
	BMCIdleInterval         time.Duration `envconfig:"BMC_IDLE_INTERVAL" default:"2s" desc:"how often power is read while the network answers (every probe once it fails)"`
	FenceTimeout            time.Duration `envconfig:"FENCE_TIMEOUT" default:"60s" desc:"how long to wait for the BMC to report off after a power-off"`
	HeartbeatStoppedAfter   time.Duration `envconfig:"HEARTBEAT_STOPPED_AFTER" default:"2s" desc:"a host's storage heartbeat unchanged this long (as the controller reads it) counts as stopped: unreachable + power on + stopped = hung"`
	FenceHung               bool          `envconfig:"FENCE_HUNG" default:"true" desc:"fence a hung host over IPMI and recover its VMs (false: alert only)"`
	FenceStorageLost        bool          `envconfig:"FENCE_STORAGE_LOST" default:"false" desc:"fence and recover a reachable host whose storage heartbeat stopped (false: alert only)"`
	UnknownReminder         time.Duration `envconfig:"UNKNOWN_REMINDER" default:"5m" desc:"how often users are told again about a host nobody can tell is off (0: once)"`

	MaxWatches int `envconfig:"MAX_WATCHES" default:"10000" desc:"hosts one controller replica can watch at once"`

	RecoveryConcurrency int     `envconfig:"RECOVERY_CONCURRENCY" default:"16" desc:"VMs of one dead host recovered at once"`
	OvercommitRatio     float64 `envconfig:"OVERCOMMIT_RATIO" default:"4" desc:"vCPUs allowed per host CPU"`
	HostReserveMiB      int64   `envconfig:"HOST_RESERVE_MIB" default:"256" desc:"memory kept free on every host"`

	// Hypervisor worker.
	HostName     string        `envconfig:"HOST_NAME" desc:"this hypervisor's name in the inventory"`
	LibvirtURI   string        `envconfig:"LIBVIRT_URI" default:"qemu:///system" desc:"libvirt URI of this hypervisor"`
	QEMUConf     string        `envconfig:"QEMU_CONF" default:"/etc/libvirt/qemu.conf" desc:"the qemu.conf libvirt uses, read at start to report whether disk leases (lock_manager) are on"`
	SharePath    string        `envconfig:"SHARE_PATH" default:"/var/lib/vmha/share" desc:"the shared storage, mounted at this path on every host"`
	ShareTimeout time.Duration `envconfig:"SHARE_TIMEOUT" default:"5s" desc:"timeout of every filesystem call on the share (a hung NFS mount must not hang the worker)"`
	// Storage heartbeat and self-fencing watchdog of the hypervisor worker (activities/heartbeat, activities/watchdog).
	HeartbeatInterval time.Duration `envconfig:"HEARTBEAT_INTERVAL" default:"500ms" desc:"how often the worker renews its storage heartbeat (<share>/vmha/heartbeats/<host>.json) and, after each successful renewal, pets the watchdog"`
	WatchdogDevice    string        `envconfig:"WATCHDOG_DEVICE" desc:"self-fencing watchdog: empty for none (the heartbeat says armed=false), /dev/watchdog for the Linux device, file:PATH for the lab's simulated one"`
	WatchdogTimeout   time.Duration `envconfig:"WATCHDOG_TIMEOUT" default:"10s" desc:"the watchdog powers the host off or resets it this long after the last successful heartbeat renewal (>= 3 x HEARTBEAT_INTERVAL; whole seconds on a Linux device, rounded up)"`

	LogLevel string `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
}

// Values of PERSISTENCE.
const (
	PersistenceSQLite   = "sqlite"
	PersistencePostgres = "postgres"
)

// Load reads the environment and checks the values that would fail later in a less clear way.
func Load() (Settings, error) {
	var s Settings
	if err := envconfig.Process(Prefix, &s); err != nil {
		return s, fmt.Errorf("read settings: %w", err)
	}
	return s, s.Validate()
}

// longestProbe bounds one probe tick: the worker check runs alongside the connect, and on the first miss the BMC is
// read until its answer is confirmed (the storage heartbeat alongside).
func (s Settings) longestProbe() time.Duration {
	return s.ProbeInterval + max(WorkerCheckTimeout, s.ProbeTimeout+time.Duration(s.PowerConfirmations)*s.BMCTimeout)
}

// Validate names the first bad setting.
func (s Settings) Validate() error {
	switch {
	case s.MissesBeforeSuspect < 1:
		return fmt.Errorf("%s_MISSES_BEFORE_SUSPECT=%d: want >= 1", Prefix, s.MissesBeforeSuspect)
	case s.MissesBeforeDead < 2:
		return fmt.Errorf("%s_MISSES_BEFORE_DEAD=%d: want >= 2; one missed connect is too little network evidence for a death, "+
			"even with the BMC saying off", Prefix, s.MissesBeforeDead)
	case s.MissesBeforeUnreachable < max(s.MissesBeforeDead, s.MissesBeforeSuspect):
		return fmt.Errorf("%s_MISSES_BEFORE_UNREACHABLE=%d: want >= MISSES_BEFORE_DEAD (%d) and MISSES_BEFORE_SUSPECT (%d)",
			Prefix, s.MissesBeforeUnreachable, s.MissesBeforeDead, s.MissesBeforeSuspect)
	case s.ProbeBudget < 0:
		return fmt.Errorf("%s_PROBE_BUDGET=%d: want >= 0 (0: no limit)", Prefix, s.ProbeBudget)
	case s.PowerConfirmations < 1:
		return fmt.Errorf("%s_POWER_CONFIRMATIONS=%d: want >= 1", Prefix, s.PowerConfirmations)
	case s.ProbeTimeout <= 0 || s.BMCTimeout <= 0:
		return fmt.Errorf("%s_PROBE_TIMEOUT=%s / %s_BMC_TIMEOUT=%s: want > 0", Prefix, s.ProbeTimeout, Prefix, s.BMCTimeout)
	case s.ProbeInterval <= 0:
		return fmt.Errorf("%s_PROBE_INTERVAL=%s: want > 0", Prefix, s.ProbeInterval)
	case s.UnknownReminder < 0:
		return fmt.Errorf("%s_UNKNOWN_REMINDER=%s: want >= 0", Prefix, s.UnknownReminder)
	case s.MaxWatches < 1:
		return fmt.Errorf("%s_MAX_WATCHES=%d: want >= 1", Prefix, s.MaxWatches)
	case s.RecoveryConcurrency < 1:
		return fmt.Errorf("%s_RECOVERY_CONCURRENCY=%d: want >= 1", Prefix, s.RecoveryConcurrency)
	case s.OvercommitRatio < 1:
		return fmt.Errorf("%s_OVERCOMMIT_RATIO=%g: want >= 1", Prefix, s.OvercommitRatio)
	case s.Persistence != PersistenceSQLite && s.Persistence != PersistencePostgres:
		return fmt.Errorf("%s_PERSISTENCE=%q: want %s or %s", Prefix, s.Persistence, PersistenceSQLite, PersistencePostgres)
	case s.PostgresPassword != "" && s.PostgresPasswordFile != "":
		return fmt.Errorf("%s_POSTGRES_PASSWORD and %s_POSTGRES_PASSWORD_FILE=%q: set one, not both", Prefix, Prefix, s.PostgresPasswordFile)
	case s.HistoryShards < 1:
		return fmt.Errorf("%s_HISTORY_SHARDS=%d: want >= 1", Prefix, s.HistoryShards)
	case s.LogLevel != "debug" && s.LogLevel != "info" && s.LogLevel != "warn" && s.LogLevel != "error":
		return fmt.Errorf("%s_LOG_LEVEL=%q: want debug, info, warn or error", Prefix, s.LogLevel)
	case (s.TLSCert == "") != (s.TLSKey == ""):
		return fmt.Errorf("%s_TLS_CERT=%q and %s_TLS_KEY=%q: set both or neither", Prefix, s.TLSCert, Prefix, s.TLSKey)
	case (s.ServerTLSCert == "") != (s.ServerTLSKey == "") || (s.ServerTLSCert == "") != (s.ServerTLSClientCA == ""):
		return fmt.Errorf("%s_SERVER_TLS_CERT=%q, %s_SERVER_TLS_KEY=%q and %s_SERVER_TLS_CLIENT_CA=%q: set all three or none",
			Prefix, s.ServerTLSCert, Prefix, s.ServerTLSKey, Prefix, s.ServerTLSClientCA)
	case s.ServerPlaintext && s.ServerTLSCert != "":
		return fmt.Errorf("%s_SERVER_PLAINTEXT=true and %s_SERVER_TLS_CERT=%q: set one, not both", Prefix, Prefix, s.ServerTLSCert)
	case net.ParseIP(s.UIAddress) == nil:
		return fmt.Errorf("%s_UI_ADDRESS=%q: want an IP address (the port is %s_UI_PORT)", Prefix, s.UIAddress, Prefix)
	case s.longestProbe() > MaxWatchTick:
		return fmt.Errorf("%s_PROBE_INTERVAL=%s + max(worker check %s, %s_PROBE_TIMEOUT=%s + %s_POWER_CONFIRMATIONS=%d x %s_BMC_TIMEOUT=%s) = %s: "+
			"want <= %s; the watch heartbeats once per probe tick and is cut off after %s without one, so a host whose BMC or network "+
			"does not answer would never be reported", Prefix, s.ProbeInterval, WorkerCheckTimeout, Prefix, s.ProbeTimeout,
			Prefix, s.PowerConfirmations, Prefix, s.BMCTimeout, s.longestProbe(), MaxWatchTick, WatchHeartbeatTimeout)
	case s.WorkerGrace < MinWorkerGrace:
		return fmt.Errorf("%s_WORKER_GRACE=%s: want >= %s; an idle worker's long poll lasts up to a minute on Temporal, "+
			"so a shorter grace would make healthy idle hosts look suspect", Prefix, s.WorkerGrace, MinWorkerGrace)
	case s.BMCIdleInterval <= 0:
		return fmt.Errorf("%s_BMC_IDLE_INTERVAL=%s: want > 0 (set it to %s_PROBE_INTERVAL to read power on every probe)", Prefix, s.BMCIdleInterval, Prefix)
	case s.FenceTimeout < 2*s.BMCTimeout+s.ProbeInterval:
		return fmt.Errorf("%s_FENCE_TIMEOUT=%s: want >= 2 x %s_BMC_TIMEOUT + %s_PROBE_INTERVAL (%s); a fence is confirmed by "+
			"two BMC readings of off, a probe interval apart", Prefix, s.FenceTimeout, Prefix, Prefix, 2*s.BMCTimeout+s.ProbeInterval)
	case s.HostReserveMiB < 0:
		return fmt.Errorf("%s_HOST_RESERVE_MIB=%d: want >= 0", Prefix, s.HostReserveMiB)
	case s.HeartbeatStoppedAfter < 0 || s.HeartbeatStoppedAfter > 0 && s.HeartbeatStoppedAfter <= 2*s.ProbeInterval:
		return fmt.Errorf("%s_HEARTBEAT_STOPPED_AFTER=%s: want 0 (no heartbeat verdicts) or more than twice %s_PROBE_INTERVAL (%s): "+
			"an unreachable host's heartbeat is read once per probe", Prefix, s.HeartbeatStoppedAfter, Prefix, 2*s.ProbeInterval)
	case s.ShareTimeout <= 0:
		return fmt.Errorf("%s_SHARE_TIMEOUT=%s: want > 0; without it a hung share hangs the worker's catalog calls", Prefix, s.ShareTimeout)
	case s.HeartbeatInterval <= 0:
		return fmt.Errorf("%s_HEARTBEAT_INTERVAL=%s: want > 0", Prefix, s.HeartbeatInterval)
	case s.WatchdogDevice == "file:":
		return fmt.Errorf("%s_WATCHDOG_DEVICE=%q: want file:PATH, the lab watchdog's file", Prefix, s.WatchdogDevice)
	case s.WatchdogDevice != "" && s.WatchdogTimeout <= 0:
		return fmt.Errorf("%s_WATCHDOG_TIMEOUT=%s: want > 0 with %s_WATCHDOG_DEVICE=%q", Prefix, s.WatchdogTimeout, Prefix, s.WatchdogDevice)
	case s.WatchdogDevice != "" && !strings.HasPrefix(s.WatchdogDevice, "file:") && s.WatchdogTimeout < time.Second:
		return fmt.Errorf("%s_WATCHDOG_TIMEOUT=%s: want >= 1s with the Linux device %s_WATCHDOG_DEVICE=%q (it counts whole seconds)",
			Prefix, s.WatchdogTimeout, Prefix, s.WatchdogDevice)
	case s.WatchdogDevice != "" && 3*s.HeartbeatInterval > s.WatchdogTimeout:
		return fmt.Errorf("%s_HEARTBEAT_INTERVAL=%s x 3 > %s_WATCHDOG_TIMEOUT=%s: want at least three renewals per watchdog timeout, "+
			"or a single late renewal resets a healthy host", Prefix, s.HeartbeatInterval, Prefix, s.WatchdogTimeout)
	}
	return nil
}

// The watch's timing, fixed in code: WatchHost (activities/controller.go) heartbeats after every probe, and a
// probe dials the host while it asks Temporal whether the host's worker polls (at most WorkerCheckTimeout), then
// reads the BMC (at most BMC_TIMEOUT); the next probe waits for the ticker (at most PROBE_INTERVAL).
// workflows/options.go watchOptions cuts a watch off after WatchHeartbeatTimeout without a heartbeat.
// MaxWatchTick leaves a second of that for the heartbeat to reach the server.
const (
	WatchHeartbeatTimeout = 5 * time.Second
	WorkerCheckTimeout    = 2 * time.Second
	MaxWatchTick          = 4 * time.Second
	// MinWorkerGrace: Temporal's matching.longPollExpirationInterval (1 minute by default) is how long an idle
	// poll waits; the server records a poller when its poll starts and ends.
	MinWorkerGrace = time.Minute
)

// Usage prints every setting with its default and meaning.
func Usage() error {
	var s Settings
	return envconfig.Usage(Prefix, &s)
}
