package temporalserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/primitives"
	"go.temporal.io/server/temporal"
)

// ClusterOptions configure StartClusterNode. Zero values take the defaults named on each field.
type ClusterOptions struct {
	// ListenAddress is the IP every service of the node listens on (the frontend, and history, matching and worker,
	// which the other nodes call); default 127.0.0.1.
	ListenAddress string
	// BroadcastAddress is the IP the other nodes reach this one on; default ListenAddress, required when that is a
	// wildcard (0.0.0.0 or ::).
	BroadcastAddress string
	// FrontendPort is the gRPC port of the frontend; default 7233. The other ports follow from it with Temporal's
	// own offsets (see servicePorts): with 7233, history 7234, matching 7235, worker 7239, membership 6933-6939.
	FrontendPort int
	// UIPort is the Web UI's HTTP port; 0 runs no UI.
	UIPort int
	// UIAddress is the IP the Web UI listens on; default 127.0.0.1.
	UIAddress string
	// UIWriteActions lets the Web UI terminate, cancel, signal, reset and start workflows; off by default.
	UIWriteActions bool
	// TLS, when set, makes the frontend require client certificates and authorize each call by the role its
	// certificate names, as on the embedded server. Traffic between the nodes (history, matching, membership) stays
	// plain: keep those ports on the management network.
	TLS *TLSFiles
	// AllowPlaintext lets the frontend serve plain gRPC on a non-loopback ListenAddress, as Options.AllowPlaintext.
	AllowPlaintext bool
	// Namespace is registered at the first start of the cluster with the vmha search attributes and 7 days of
	// retention; required.
	Namespace string
	// HistoryShards is fixed when the cluster first starts on an empty database; later values are ignored with a
	// warning from the server. Default 16.
	HistoryShards int32
	// Postgres holds persistence and visibility; Address and User are required.
	Postgres Postgres
	// Logger receives the server's warnings and errors; default slog.Default().
	Logger *slog.Logger
}

const (
	defaultHistoryShards = 16
	// membershipOffset: Temporal's default ports put each service's membership (ringpop) port 300 below its gRPC port.
	membershipOffset = 300
	// maxMembershipPort: the cluster_membership table of Temporal's PostgreSQL schema keeps the port as a smallint.
	maxMembershipPort = 32767
	// joinTimeout bounds the wait for the ring: the first node finds no peer and goes on after it.
	joinTimeout = 30 * time.Second
	// prepareTimeout bounds the wait for the preparation lock and the schema work under it: a whole cluster starting
	// at once waits for each node's turn, a few seconds each.
	prepareTimeout = 2 * time.Minute
)

// servicePorts are the gRPC and membership ports of each service of a node with this frontend port, laid out as in
// Temporal's own default configuration (frontend 7233, history 7234, matching 7235, worker 7239).
func servicePorts(frontendPort int) map[primitives.ServiceName]config.RPC {
	ports := map[primitives.ServiceName]config.RPC{}
	for name, offset := range map[primitives.ServiceName]int{
		primitives.FrontendService: 0,
		primitives.HistoryService:  1,
		primitives.MatchingService: 2,
		primitives.WorkerService:   6,
	} {
		ports[name] = config.RPC{GRPCPort: frontendPort + offset, MembershipPort: frontendPort + offset - membershipOffset}
	}
	return ports
}

func (o ClusterOptions) withDefaults() ClusterOptions {
	if o.ListenAddress == "" {
		o.ListenAddress = defaultListenAddress
	}
	if o.BroadcastAddress == "" && !net.ParseIP(o.ListenAddress).IsUnspecified() {
		o.BroadcastAddress = o.ListenAddress
	}
	if o.UIAddress == "" {
		o.UIAddress = defaultListenAddress
	}
	if o.FrontendPort == 0 {
		o.FrontendPort = defaultFrontendPort
	}
	if o.HistoryShards == 0 {
		o.HistoryShards = defaultHistoryShards
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Postgres = o.Postgres.withDefaults()
	return o
}

func (o ClusterOptions) validate() error {
	broadcast := net.ParseIP(o.BroadcastAddress)
	switch {
	case net.ParseIP(o.ListenAddress) == nil:
		return fmt.Errorf("temporal cluster node ListenAddress=%q: not an IP address", o.ListenAddress)
	case o.BroadcastAddress == "":
		return fmt.Errorf("temporal cluster node BroadcastAddress: empty with ListenAddress=%s; the other nodes need "+
			"this node's own IP", o.ListenAddress)
	case broadcast == nil || broadcast.IsUnspecified():
		return fmt.Errorf("temporal cluster node BroadcastAddress=%q: want this node's own IP address", o.BroadcastAddress)
	case o.FrontendPort-membershipOffset < 1 || o.FrontendPort+6-membershipOffset > maxMembershipPort:
		return fmt.Errorf("temporal cluster node FrontendPort=%d: want %d-%d (the other services use up to 6 above it, "+
			"their membership ports %d below, and Temporal stores those as a smallint, at most %d)", o.FrontendPort,
			membershipOffset+1, maxMembershipPort+membershipOffset-6, membershipOffset, maxMembershipPort)
	case o.UIPort < 0 || o.UIPort > 65535:
		return fmt.Errorf("temporal cluster node UIPort=%d: want 0 (no UI) or 1-65535", o.UIPort)
	case net.ParseIP(o.UIAddress) == nil:
		return fmt.Errorf("temporal cluster node UIAddress=%q: not an IP address", o.UIAddress)
	case o.Namespace == "":
		return errors.New("temporal cluster node Namespace: empty")
	case o.HistoryShards < 1:
		return fmt.Errorf("temporal cluster node HistoryShards=%d: want >= 1", o.HistoryShards)
	}
	for _, p := range servicePorts(o.FrontendPort) {
		if o.UIPort == p.GRPCPort || o.UIPort == p.MembershipPort {
			return fmt.Errorf("temporal cluster node UIPort=%d: taken by the node's services (FrontendPort=%d)", o.UIPort, o.FrontendPort)
		}
	}
	if o.TLS != nil {
		if err := o.TLS.validate(); err != nil {
			return err
		}
	}
	return o.Postgres.validate()
}

// StartClusterNode runs one node of a Temporal cluster on PostgreSQL: all four services (frontend, history,
// matching, worker) in this process, finding the other nodes through the cluster_membership table as Temporal's
// ringpop membership does, and the Web UI if asked for. Under a lock shared by every node it creates or upgrades the
// databases, registers o.Namespace with vmha's search attributes, and lets its server initialise the cluster
// metadata; it returns once its frontend serves the namespace. ctx bounds the start, not the node's life: it runs
// until Stop.
func StartClusterNode(ctx context.Context, o ClusterOptions) (srv *Server, err error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	var sec *serverTLS
	if o.TLS != nil {
		if sec, err = loadServerTLS(*o.TLS); err != nil {
			return nil, err
		}
		// The nodes verify each other by one name (internode TLS, see serverTLS.apply): each node's own address
		// would fail on every other node.
		if net.ParseIP(sec.serverName) != nil {
			return nil, fmt.Errorf("cluster node certificate %s names no DNS name: nodes verify each other by the cluster's DNS "+
				"name, which every node's certificate must carry first (vmha certs issue --role server --dns <cluster name> --ip <node address>)", o.TLS.Cert)
		}
	}
	if err := checkOpen(o.ListenAddress, o.FrontendPort, o.TLS, o.AllowPlaintext, o.Logger); err != nil {
		return nil, err
	}
	ports := servicePorts(o.FrontendPort)
	// The server cannot report a taken port as an error (it calls Logger.Fatal from a goroutine for some), so check
	// every one first.
	for name, p := range ports {
		for _, port := range []int{p.GRPCPort, p.MembershipPort} {
			if err := checkPortFree(o.ListenAddress, port); err != nil {
				return nil, fmt.Errorf("temporal %s service: %w", name, err)
			}
		}
	}
	frontendAddress := net.JoinHostPort(dialHost(o.ListenAddress), strconv.Itoa(o.FrontendPort))
	ui, err := listenUI(o.UIAddress, o.UIPort)
	if err != nil {
		return nil, err
	}
	defer func() {
		if srv == nil {
			ui.close()
		}
	}()

	ts, err := startLocked(ctx, o, ports, frontendAddress, sec)
	if err != nil {
		return nil, err
	}
	added, err := ensureSearchAttributes(ctx, frontendAddress, o.Namespace, sec.clientConfig(), o.Logger)
	if err != nil {
		return nil, errors.Join(err, ts.stop())
	}
	if added {
		// Only a namespace registered by something else lacks them (vmha registers it with all of them). Every
		// service of every node re-reads namespaces every namespaceRefresh; restarting them all is not ours to do.
		o.Logger.Warn("temporal: search attributes added to the namespace; workflows that set them are refused "+
			"until every node has re-read it", "namespace", o.Namespace, "within", namespaceRefresh)
	}
	return serve(ts, frontendAddress, sec, ui, o.Namespace, o.UIWriteActions, o.Logger)
}

// namespaceRefresh is Temporal's default namespace cache refresh interval (system.namespaceCacheRefreshInterval).
const namespaceRefresh = 10 * time.Second

// startLocked prepares the databases and starts the server while holding the preparation lock.
func startLocked(ctx context.Context, o ClusterOptions, ports map[primitives.ServiceName]config.RPC, frontendAddress string, sec *serverTLS) (*embedded, error) {
	prepCtx, cancel := context.WithTimeout(ctx, prepareTimeout)
	defer cancel()
	bridge := &slogBridge{log: o.Logger}
	lock, err := lockPreparation(prepCtx, o.Postgres)
	if err != nil {
		return nil, err
	}
	if err := lock.prepare(prepCtx, o.Postgres, o.Namespace, bridge); err != nil {
		return nil, errors.Join(err, lock.unlock())
	}
	conf := clusterConfig(o, ports, frontendAddress)
	sec.apply(conf)
	opts, err := sec.serverOptions(conf, o.Namespace, frontendAddress, o.Logger)
	if err != nil {
		return nil, errors.Join(err, lock.unlock())
	}
	dyn := clusterDynamicConfig()
	if sec != nil {
		// Membership gossip (ringpop) over mutual TLS too, with the internode certificates: plain, anyone reaching
		// a membership port could join the rings and be handed shards.
		dyn[dynamicconfig.EnableRingpopTLS.Key()] = true
	}
	opts = append(opts, temporal.WithDynamicConfigClient(dyn))
	ts, err := runTemporal(conf, nil, o.Logger, opts...)
	if err != nil {
		return nil, errors.Join(err, lock.unlock())
	}
	if err := lock.unlock(); err != nil {
		return nil, errors.Join(err, ts.stop())
	}
	return ts, nil
}

// clusterDynamicConfig is dynamicConfig with one partition per task queue. With Temporal's default of four, spread
// over the nodes' matching services, a workflow took about a minute (the long-poll expiry) to go on after a node's
// SIGKILL in 2 of 12 runs of tests/production, as if its task and the workers' polls sat in different partitions;
// with one partition, 12 runs of 12 went on within 12 s. vmha's queues need nowhere near one partition's throughput.
func clusterDynamicConfig() dynamicconfig.StaticClient {
	dyn := dynamicConfig()
	dyn[dynamicconfig.MatchingNumTaskqueueReadPartitions.Key()] = 1
	dyn[dynamicconfig.MatchingNumTaskqueueWritePartitions.Key()] = 1
	return dyn
}

func clusterConfig(o ClusterOptions, ports map[primitives.ServiceName]config.RPC, frontendAddress string) *config.Config {
	services := map[string]config.Service{}
	for name, rpc := range ports {
		rpc.BindOnIP = o.ListenAddress
		services[string(name)] = config.Service{RPC: rpc}
	}
	store := config.Persistence{
		DefaultStore:     "temporal",
		VisibilityStore:  "visibility",
		NumHistoryShards: o.HistoryShards,
		DataStores: map[string]config.DataStore{
			"temporal":   {SQL: o.Postgres.sqlConfig(o.Postgres.Database)},
			"visibility": {SQL: o.Postgres.sqlConfig(o.Postgres.VisibilityDatabase)},
		},
	}
	return temporalConfig(o.BroadcastAddress, store, services, frontendAddress)
}
