// Package temporalserver runs a Temporal server and its Web UI inside the vmha process, persisted in one SQLite file,
// so that a small cluster needs no separate Temporal deployment. It follows the Temporal CLI's dev server, with a file
// database, our namespace and search attributes created up front, and only warnings and errors logged.
package temporalserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/membership/static"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/common/primitives"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"
	"google.golang.org/protobuf/types/known/durationpb"

	"vmha/types"
)

// Options configure Start. Zero values take the defaults named on each field.
type Options struct {
	// DataDir holds the SQLite file (temporal.db); it is created with mode 0700 when missing.
	DataDir string
	// ListenAddress is the IP the frontend and the Web UI listen on; default 127.0.0.1. The server's internal
	// services always listen on 127.0.0.1 only.
	ListenAddress string
	// FrontendPort is the gRPC port of the frontend; default 7233.
	FrontendPort int
	// UIPort is the Web UI's HTTP port; 0 runs no UI.
	UIPort int
	// Namespace is created at first start with the vmha search attributes and 7 days of retention; required.
	Namespace string
	// Logger receives the server's warnings and errors; default slog.Default().
	Logger *slog.Logger
	// TLS, when set, makes the frontend require client certificates and authorize each call by the role its
	// certificate names (see authorizer). Without it anyone who reaches the frontend may do anything.
	TLS *TLSFiles
	// UIAddress is the IP the Web UI listens on; default 127.0.0.1.
	UIAddress string
	// UIWriteActions lets the Web UI terminate, cancel, signal, reset and start workflows; off by default.
	UIWriteActions bool
	// AllowPlaintext lets the frontend serve plain gRPC, without TLS or authorization, on a non-loopback
	// ListenAddress (a lab behind a firewall only); without it Start refuses to. Loopback needs no TLS.
	AllowPlaintext bool
}

const (
	defaultListenAddress = "127.0.0.1"
	defaultFrontendPort  = 7233
	dbFileName           = "temporal.db"
	// retention is how long closed workflows stay visible: long enough to read a weekend's incidents on Monday.
	retention = 7 * 24 * time.Hour
	// internalHost is where history, matching and worker listen: they only talk to each other and the frontend.
	internalHost = "127.0.0.1"
	clusterName  = "active"
)

// searchAttributes are the custom search attributes vmha's workflows set.
var searchAttributes = map[string]enumspb.IndexedValueType{
	types.HostAttr.GetName():           types.HostAttr.GetValueType(),
	types.HostStateAttr.GetName():      types.HostStateAttr.GetValueType(),
	types.HostStateSinceAttr.GetName(): types.HostStateSinceAttr.GetValueType(),
}

// Server is a running Temporal server (and Web UI, if asked for).
type Server struct {
	temporal        *embedded
	ui              *webUI
	frontendAddress string
	uiAddress       string
	tls             *serverTLS
}

// FrontendAddress is the host:port clients dial (127.0.0.1 when listening on all addresses).
func (s *Server) FrontendAddress() string { return s.frontendAddress }

// UIAddress is the host:port of the Web UI, empty when it is off.
func (s *Server) UIAddress() string { return s.uiAddress }

// Stop stops the Web UI, then the server. SQLite keeps the file consistent even when the process dies without Stop.
func (s *Server) Stop() error {
	var errs []error
	if s.ui != nil {
		errs = append(errs, s.ui.stop())
	}
	errs = append(errs, s.temporal.stop(), s.tls.close())
	return errors.Join(errs...)
}

// Start opens (or creates) the database in o.DataDir, starts the server and the Web UI, and returns once the
// frontend serves o.Namespace with every vmha search attribute. ctx bounds that last check, not the server's life:
// it runs until Stop.
func Start(ctx context.Context, o Options) (srv *Server, err error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if err := checkOpen(o.ListenAddress, o.FrontendPort, o.TLS, o.AllowPlaintext, o.Logger); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", o.DataDir, err)
	}
	var sec *serverTLS
	if o.TLS != nil {
		if sec, err = loadServerTLS(*o.TLS); err != nil {
			return nil, err
		}
	}
	sqlConf := sqliteConfig(filepath.Join(o.DataDir, dbFileName))
	if err := prepareDatabase(sqlConf, o.Namespace); err != nil {
		return nil, err
	}

	frontendAddress := net.JoinHostPort(dialHost(o.ListenAddress), strconv.Itoa(o.FrontendPort))
	// The server cannot report a taken port as an error (it calls Logger.Fatal), so check it first.
	if err := checkPortFree(o.ListenAddress, o.FrontendPort); err != nil {
		return nil, fmt.Errorf("frontend port: %w", err)
	}
	ui, err := listenUI(o.UIAddress, o.UIPort)
	if err != nil {
		return nil, err
	}
	defer func() {
		if srv == nil {
			ui.close()
		}
	}()

	ts, err := startTemporal(o, sqlConf, frontendAddress, sec)
	if err != nil {
		return nil, err
	}
	added, err := ensureSearchAttributes(ctx, frontendAddress, o.Namespace, sec.clientConfig(), o.Logger)
	if err != nil {
		return nil, errors.Join(err, ts.stop())
	}
	if added {
		// Each service caches namespace metadata and re-reads it only every few seconds: until then a workflow
		// setting a new attribute is refused. A restart makes all of them read it now (this happens once per upgrade).
		if err := ts.stop(); err != nil {
			return nil, err
		}
		if ts, err = startTemporal(o, sqlConf, frontendAddress, sec); err != nil {
			return nil, err
		}
	}
	return serve(ts, frontendAddress, sec, ui, o.Namespace, o.UIWriteActions, o.Logger)
}

// uiEndpoint is the Web UI's listener, opened before the server starts so that a taken port fails the start at once.
type uiEndpoint struct {
	listener net.Listener
	// address is the host:port to browse to (loopback when listening on all addresses).
	address string
}

// listenUI listens for the Web UI on address:port; nil for port 0 (no UI).
func listenUI(address string, port int) (*uiEndpoint, error) {
	if port == 0 {
		return nil, nil
	}
	addr := net.JoinHostPort(address, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("web UI listen on %s: %w", addr, err)
	}
	return &uiEndpoint{listener: ln, address: net.JoinHostPort(dialHost(address), strconv.Itoa(port))}, nil
}

// close closes the listener of a UI that never started.
func (u *uiEndpoint) close() {
	if u != nil {
		_ = u.listener.Close()
	}
}

// serve is the running ts as a Server, with the Web UI on ui unless it is nil; when the UI fails, it stops ts too.
func serve(ts *embedded, frontendAddress string, sec *serverTLS, ui *uiEndpoint, namespace string, writeActions bool, logger *slog.Logger) (*Server, error) {
	s := &Server{temporal: ts, frontendAddress: frontendAddress, tls: sec}
	if ui == nil {
		return s, nil
	}
	var err error
	if s.ui, err = startWebUI(ui.listener, frontendAddress, namespace, sec, writeActions, logger); err != nil {
		return nil, errors.Join(err, s.Stop())
	}
	s.uiAddress = ui.address
	return s, nil
}

func (o Options) withDefaults() Options {
	if o.ListenAddress == "" {
		o.ListenAddress = defaultListenAddress
	}
	if o.UIAddress == "" {
		o.UIAddress = defaultListenAddress
	}
	if o.FrontendPort == 0 {
		o.FrontendPort = defaultFrontendPort
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.DataDir == "":
		return errors.New("temporal server DataDir: empty")
	case net.ParseIP(o.ListenAddress) == nil:
		return fmt.Errorf("temporal server ListenAddress=%q: not an IP address", o.ListenAddress)
	case o.FrontendPort < 1 || o.FrontendPort > 65535:
		return fmt.Errorf("temporal server FrontendPort=%d: want 1-65535", o.FrontendPort)
	case o.UIPort < 0 || o.UIPort > 65535:
		return fmt.Errorf("temporal server UIPort=%d: want 0 (no UI) or 1-65535", o.UIPort)
	case o.UIPort == o.FrontendPort:
		return fmt.Errorf("temporal server UIPort=%d: same as FrontendPort", o.UIPort)
	case o.Namespace == "":
		return errors.New("temporal server Namespace: empty")
	case net.ParseIP(o.UIAddress) == nil:
		return fmt.Errorf("temporal server UIAddress=%q: not an IP address", o.UIAddress)
	case o.TLS != nil:
		return o.TLS.validate()
	}
	return nil
}

// dialHost is the address to connect to for a listener bound to listen: loopback for a wildcard.
func dialHost(listen string) string {
	ip := net.ParseIP(listen)
	switch {
	case ip == nil || !ip.IsUnspecified():
		return listen
	case ip.To4() != nil:
		return "127.0.0.1"
	default:
		return "::1"
	}
}

func sqliteConfig(file string) *config.SQL {
	return &config.SQL{
		PluginName:   sqliteplugin.PluginName,
		DatabaseName: file,
		// Pragma names go without a leading underscore: the plugin prefixes _pragma= itself, and SQLite silently
		// ignores a misspelt pragma. WAL roughly doubles workflow throughput over the rollback journal.
		ConnectAttributes: map[string]string{"mode": "rwc", "journal_mode": "wal", "synchronous": "normal"},
		// One writer at a time is what SQLite allows; a second connection only adds "database is locked" retries.
		MaxConns: 1,
	}
}

// prepareDatabase creates the schema in a new file and our namespace where it is missing; both are no-ops on an
// existing database.
func prepareDatabase(sqlConf *config.SQL, namespace string) error {
	file := sqlConf.DatabaseName
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		if err := sqliteschema.SetupSchema(sqlConf); err != nil {
			// A half-made schema would be taken for a complete one at the next start.
			_ = os.Remove(file)
			return fmt.Errorf("create temporal schema in %s: %w", file, err)
		}
	} else if err != nil {
		return fmt.Errorf("stat %s: %w", file, err)
	}
	ns, err := sqliteschema.NewNamespaceConfig(clusterName, namespace, false, searchAttributes)
	if err != nil {
		return fmt.Errorf("namespace %s config: %w", namespace, err)
	}
	ns.Detail.Config.Retention = durationpb.New(retention)
	if err := sqliteschema.CreateNamespaces(sqlConf, ns); err != nil {
		return fmt.Errorf("create namespace %s in %s: %w", namespace, file, err)
	}
	return nil
}

func serverConfig(o Options, sqlConf *config.SQL, frontendAddress string) (*config.Config, error) {
	services := map[string]config.Service{
		string(primitives.FrontendService): {RPC: config.RPC{GRPCPort: o.FrontendPort, BindOnIP: o.ListenAddress}},
	}
	for _, name := range []primitives.ServiceName{primitives.HistoryService, primitives.MatchingService, primitives.WorkerService} {
		port, err := freePort(internalHost)
		if err != nil {
			return nil, fmt.Errorf("port for temporal %s service: %w", name, err)
		}
		services[string(name)] = config.Service{RPC: config.RPC{GRPCPort: port, BindOnIP: internalHost}}
	}
	store := config.Persistence{
		DefaultStore:    "sqlite",
		VisibilityStore: "sqlite",
		// Fixed when the database is created; one shard is plenty for one SQLite writer.
		NumHistoryShards: 1,
		DataStores:       map[string]config.DataStore{"sqlite": {SQL: sqlConf}},
	}
	return temporalConfig(internalHost, store, services, frontendAddress), nil
}

// temporalConfig is the configuration of one Temporal cluster of its own, as every vmha server runs: the embedded
// server and a cluster node differ only in the address they broadcast, where they keep their data and where their
// services listen.
func temporalConfig(broadcast string, store config.Persistence, services map[string]config.Service, frontendAddress string) *config.Config {
	var conf config.Config
	conf.Global.Membership.MaxJoinDuration = joinTimeout
	conf.Global.Membership.BroadcastAddress = broadcast
	conf.Persistence = store
	conf.ClusterMetadata = &cluster.Config{
		FailoverVersionIncrement: 10,
		MasterClusterName:        clusterName,
		CurrentClusterName:       clusterName,
		ClusterInformation: map[string]cluster.ClusterInformation{
			// The address other Temporal clusters would replicate through; one cluster has no use for it, and the
			// last cluster node to start records its own.
			clusterName: {Enabled: true, InitialFailoverVersion: 1, RPCAddress: frontendAddress},
		},
	}
	conf.DCRedirectionPolicy.Policy = "noop"
	conf.Services = services
	conf.Archival.History.State = "disabled"
	conf.Archival.Visibility.State = "disabled"
	conf.NamespaceDefaults.Archival.History.State = "disabled"
	conf.NamespaceDefaults.Archival.Visibility.State = "disabled"
	// The worker service (schedules, batch jobs) dials its own node's frontend through this.
	conf.PublicClient.HostPort = frontendAddress
	return &conf
}

// fatalPanic carries a Logger.Fatal of the server up to startTemporal, which turns it into an error.
type fatalPanic struct{ msg string }

// embedded is one running temporal.Server and the log bridge it writes through.
type embedded struct {
	server temporal.Server
	log    *slogBridge
}

func (e *embedded) stop() error {
	e.log.muted.Store(true)
	if err := e.server.Stop(); err != nil {
		return fmt.Errorf("stop temporal server: %w", err)
	}
	return nil
}

func startTemporal(o Options, sqlConf *config.SQL, frontendAddress string, sec *serverTLS) (*embedded, error) {
	conf, err := serverConfig(o, sqlConf, frontendAddress)
	if err != nil {
		return nil, err
	}
	sec.apply(conf)
	hosts := map[primitives.ServiceName]static.Hosts{}
	for name, svc := range conf.Services {
		host := net.JoinHostPort(internalHost, strconv.Itoa(svc.RPC.GRPCPort))
		if name == string(primitives.FrontendService) {
			host = conf.PublicClient.HostPort
		}
		hosts[primitives.ServiceName(name)] = static.SingleLocalHost(host)
	}
	opts, err := sec.serverOptions(conf, o.Namespace, frontendAddress, o.Logger)
	if err != nil {
		return nil, err
	}
	return runTemporal(conf, hosts, o.Logger, opts...)
}

// runTemporal creates and starts a server with conf. Its services find each other through hosts, or, when hosts is
// nil, through Temporal's ringpop membership in the database (a cluster node).
// extra options come last and win (vmha's authorizer and claim mapper, see serverTLS.serverOptions).
func runTemporal(conf *config.Config, hosts map[primitives.ServiceName]static.Hosts, logger *slog.Logger, extra ...temporal.ServerOption) (e *embedded, err error) {
	bridge := &slogBridge{log: logger}
	authorizer, err := authorization.GetAuthorizerFromConfig(&conf.Global.Authorization)
	if err != nil {
		return nil, fmt.Errorf("temporal authorizer: %w", err)
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&conf.Global.Authorization, bridge)
	if err != nil {
		return nil, fmt.Errorf("temporal claim mapper: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatalPanic)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("start temporal server: %s", f.msg)
		}
	}()
	ts, err := temporal.NewServer(append([]temporal.ServerOption{
		temporal.WithConfig(conf),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithStaticHosts(hosts),
		temporal.WithLogger(bridge),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper }),
		temporal.WithDynamicConfigClient(dynamicConfig()),
	}, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("create temporal server: %w", err)
	}
	if err := ts.Start(); err != nil {
		return nil, fmt.Errorf("start temporal server on %s: %w", conf.PublicClient.HostPort, err)
	}
	return &embedded{server: ts, log: bridge}, nil
}

// dynamicConfig is the dynamic configuration every vmha Temporal server runs with.
func dynamicConfig() dynamicconfig.StaticClient {
	return dynamicconfig.StaticClient{
		// Values of the Temporal CLI's dev server: a bigger mutable state cache, and visibility queries
		// (the Web UI's lists) not throttled to the production default.
		dynamicconfig.HistoryCacheHostLevelMaxSize.Key():                 8096,
		dynamicconfig.FrontendMaxNamespaceVisibilityRPSPerInstance.Key(): 100,
		// Every hypervisor worker long-polls (3 polls per host) and every monitor's watch heartbeats: the
		// production defaults (1,200 concurrent polls, 2,400 RPS per namespace) refuse them from ~400 hosts on.
		dynamicconfig.FrontendMaxConcurrentLongRunningRequestsPerInstance.Key(): 50000,
		dynamicconfig.FrontendMaxNamespaceRPSPerInstance.Key():                  20000,
		dynamicconfig.FrontendRPS.Key():                                         20000,
		dynamicconfig.MatchingRPS.Key():                                         20000,
		dynamicconfig.HistoryRPS.Key():                                          20000,
		// A recovery's controller steps (settings, host list, placement, notifications) run on the task queue of
		// the workflow that schedules them: eager execution hands each to that worker in the reply to its workflow
		// task, one matching round trip less per step on the way to a VM's restart.
		dynamicconfig.EnableActivityEagerExecution.Key(): true,
	}
}

// ensureSearchAttributes adds the vmha search attributes the namespace lacks, and tells whether it added any: a
// database created by an older vmha keeps its namespace as it was, since CreateNamespaces skips an existing one.
// tlsConf is how the server's own clients dial its frontend (serverTLS.clientConfig; nil: plain gRPC).
func ensureSearchAttributes(ctx context.Context, frontendAddress, namespace string, tlsConf *tls.Config, logger *slog.Logger) (bool, error) {
	c, err := client.DialContext(ctx, client.Options{
		HostPort:          frontendAddress,
		Namespace:         namespace,
		Logger:            sdklog.NewStructuredLogger(logger),
		ConnectionOptions: client.ConnectionOptions{TLS: tlsConf},
	})
	if err != nil {
		return false, fmt.Errorf("dial embedded temporal at %s: %w", frontendAddress, err)
	}
	defer c.Close()
	have, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return false, fmt.Errorf("list search attributes of %s: %w", namespace, err)
	}
	missing := map[string]enumspb.IndexedValueType{}
	for name, want := range searchAttributes {
		got, ok := have.GetCustomAttributes()[name]
		switch {
		case !ok:
			missing[name] = want
		case got != want:
			return false, fmt.Errorf("search attribute %s of %s is %s, want %s", name, namespace, got, want)
		}
	}
	if len(missing) == 0 {
		return false, nil
	}
	if _, err := c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace:        namespace,
		SearchAttributes: missing,
	}); err != nil {
		return false, fmt.Errorf("add search attributes %v to %s: %w", missing, namespace, err)
	}
	return true, nil
}
