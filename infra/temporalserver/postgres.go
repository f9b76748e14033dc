package temporalserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/server/common/auth"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/persistence/sql/sqlplugin/postgresql"
	sqliteschema "go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/tools/common/schema"
	sqltool "go.temporal.io/server/tools/sql"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Postgres is where a cluster node keeps Temporal's persistence and visibility.
type Postgres struct {
	// Address is host:port of the PostgreSQL server, or several separated by commas (a primary and its standbys):
	// every connection goes to the first of them that accepts writes, so a node follows a promotion by itself.
	Address string
	User    string
	// Password is never logged; empty when the server trusts the user (peer or trust authentication).
	Password string
	// Database holds Temporal's persistence (histories, shards, namespaces, cluster membership); default temporal.
	Database string
	// VisibilityDatabase holds the workflow lists the Web UI and `vmha recoveries` query; default temporal_visibility.
	VisibilityDatabase string
	// TLSCAFile, when set, turns on TLS to PostgreSQL, verifying the server's certificate against it and its name
	// against Address's host (use the name the certificate carries there).
	TLSCAFile string
}

const (
	defaultPostgresDatabase   = "temporal"
	defaultVisibilityDatabase = "temporal_visibility"
	// maintenanceDatabase exists on every PostgreSQL server and accepts every user by default: nodes meet there for
	// the preparation lock before Temporal's own databases exist.
	maintenanceDatabase = "postgres"
	// prepareLockKey names the advisory lock under which a node creates or upgrades the databases and the namespace
	// and initialises Temporal's cluster metadata; any constant that no other application on the server uses.
	prepareLockKey int64 = 0x766d68615f707265 // "vmha_pre"
	// Per pool: each of a node's four services opens its own persistence and visibility pools.
	postgresMaxConns = 10
)

// sessionAttributes are the libpq connection parameters of every connection, Temporal's and vmha's own: with
// several servers in Address, pgx tries them in order and keeps the first that accepts writes (a standby, or a
// demoted primary back as one, is skipped), which is how a node finds the new primary after a failover.
// connect_timeout (seconds, per server) matters when a server listed first hangs or its machine is gone: it never
// refuses a connect, and each new connection waits out the timeout there before it tries the next server. It must
// stay well below Temporal's 3 s deadline for a history task: with 5 s, every visibility task ran out of time on the
// first server, the visibility pool never opened a connection, and no list showed a workflow's end again (measured,
// TestPostgresFailover).
func sessionAttributes() map[string]string {
	return map[string]string{"target_session_attrs": "read-write", "connect_timeout": "2"}
}

func (p Postgres) withDefaults() Postgres {
	if p.Database == "" {
		p.Database = defaultPostgresDatabase
	}
	if p.VisibilityDatabase == "" {
		p.VisibilityDatabase = defaultVisibilityDatabase
	}
	return p
}

// servers are the host:port entries of Address, spaces around each removed.
func (p Postgres) servers() []string {
	servers := strings.Split(p.Address, ",")
	for i, s := range servers {
		servers[i] = strings.TrimSpace(s)
	}
	return servers
}

// connectAddress is Address as pgx takes several servers: host:port entries joined by commas, no spaces.
func (p Postgres) connectAddress() string { return strings.Join(p.servers(), ",") }

// validateAddress names VMHA_POSTGRES_ADDRESS, where Address comes from, and the entry at fault.
func (p Postgres) validateAddress() error {
	servers := p.servers()
	for i, server := range servers {
		host, port, err := net.SplitHostPort(server)
		var problem string
		switch {
		case server == "":
			problem = "is empty"
		case err != nil:
			problem = "is not host:port"
		case host == "":
			problem = "has an empty host"
		case len(servers) > 1 && strings.Contains(host, ":"):
			// Both Temporal and vmha hand pgx a URL, and Go's URL parser takes a bracketed IPv6 host only alone.
			problem = "is an IPv6 address, which a list of several servers cannot carry: give it a DNS name"
		default:
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				problem = fmt.Sprintf("has port %q, want 1-65535", port)
			}
		}
		if problem != "" {
			return fmt.Errorf("VMHA_POSTGRES_ADDRESS=%q: server %d (%q) %s; want host:port, or several separated by "+
				"commas (a primary and its standbys)", p.Address, i+1, server, problem)
		}
	}
	return nil
}

func (p Postgres) validate() error {
	if err := p.validateAddress(); err != nil {
		return err
	}
	switch {
	case p.User == "":
		return errors.New("postgres User: empty")
	case p.Database == p.VisibilityDatabase:
		return fmt.Errorf("postgres VisibilityDatabase=%q: same as Database; Temporal needs two databases", p.VisibilityDatabase)
	}
	return nil
}

// sqlConfig is Temporal's view of one of the two databases.
func (p Postgres) sqlConfig(database string) *config.SQL {
	c := &config.SQL{
		PluginName:      postgresql.PluginNamePGX,
		DatabaseName:    database,
		ConnectAddr:     p.connectAddress(),
		ConnectProtocol: "tcp",
		// Temporal appends these to its DSN, postgres://user:password@<ConnectAddr>/<database>?<attributes>.
		ConnectAttributes: sessionAttributes(),
		User:              p.User,
		Password:          p.Password,
		MaxConns:          postgresMaxConns,
		MaxIdleConns:      postgresMaxConns,
		// A connection outlives neither a PostgreSQL failover behind a proxy nor a rotated password for long.
		MaxConnLifetime: time.Hour,
	}
	if p.TLSCAFile != "" {
		c.TLS = &auth.TLS{Enabled: true, CaFile: p.TLSCAFile, EnableHostVerification: true}
	}
	return c
}

// connString is the libpq URL of database, with the same TLS rules as sqlConfig.
func (p Postgres) connString(database string) string {
	u := url.URL{Scheme: "postgres", Host: p.connectAddress(), Path: "/" + database, User: url.UserPassword(p.User, p.Password)}
	q := url.Values{"sslmode": {"disable"}, "application_name": {"vmha"}}
	for k, v := range sessionAttributes() {
		q.Set(k, v)
	}
	if p.TLSCAFile != "" {
		q.Set("sslmode", "verify-full")
		q.Set("sslrootcert", p.TLSCAFile)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// preparationLock is held while a node prepares the databases and while its Temporal server initialises the
// cluster metadata: Temporal's schema tool and its metadata initialisation both fail when two nodes run them at
// once, which is exactly what happens when a whole cluster is powered on together.
type preparationLock struct{ conn *pgx.Conn }

// lockPreparation waits (as long as ctx allows) for the cluster-wide preparation lock, a PostgreSQL session advisory
// lock: it is released when unlock is called or the session ends, so a node killed while preparing frees it at once.
func lockPreparation(ctx context.Context, p Postgres) (*preparationLock, error) {
	conn, err := pgx.Connect(ctx, p.connString(maintenanceDatabase))
	if err != nil {
		return nil, fmt.Errorf("connect to postgres %s as %s, database %s: %w", p.Address, p.User, maintenanceDatabase, err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", prepareLockKey); err != nil {
		return nil, errors.Join(fmt.Errorf("wait for the cluster preparation lock on postgres %s: %w", p.Address, err), conn.Close(ctx))
	}
	return &preparationLock{conn: conn}, nil
}

// unlock releases the lock by ending its session: it needs no round trip that could fail halfway.
func (l *preparationLock) unlock() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.conn.Close(ctx); err != nil {
		return fmt.Errorf("release the cluster preparation lock: %w", err)
	}
	return nil
}

// prepare creates the two databases when missing, creates or upgrades their schemas to what this Temporal server
// needs, and registers the namespace with vmha's search attributes when missing. Every step is idempotent; the caller
// holds the preparation lock.
func (l *preparationLock) prepare(ctx context.Context, p Postgres, namespace string, logger log.Logger) error {
	for _, db := range []struct{ name, schema string }{
		{p.Database, "postgresql/v12/temporal"},
		{p.VisibilityDatabase, "postgresql/v12/visibility"},
	} {
		if err := l.createDatabase(ctx, db.name); err != nil {
			return err
		}
		if err := upgradeSchema(p.sqlConfig(db.name), db.schema, logger); err != nil {
			return err
		}
	}
	ns, err := sqliteschema.NewNamespaceConfig(clusterName, namespace, false, searchAttributes)
	if err != nil {
		return fmt.Errorf("namespace %s config: %w", namespace, err)
	}
	ns.Detail.Config.Retention = durationpb.New(retention)
	// Despite its package, CreateNamespaces writes through whichever SQL plugin the config names; it skips a
	// namespace that exists, and the lock keeps two nodes from inserting it twice.
	if err := sqliteschema.CreateNamespaces(p.sqlConfig(p.Database), ns); err != nil {
		return fmt.Errorf("register namespace %s in postgres database %s: %w", namespace, p.Database, err)
	}
	return nil
}

// createDatabase creates name unless it exists: a site whose DBA created the databases may give vmha's user no
// CREATEDB privilege, and PostgreSQL checks that privilege before it notices the database exists.
func (l *preparationLock) createDatabase(ctx context.Context, name string) error {
	var exists bool
	if err := l.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look up postgres database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	// The next connection to the new database may try a standby listed first in Address, and pgx gives up on the
	// remaining servers when one says the database does not exist: remote_apply returns only once the synchronous
	// standbys have replayed the creation (without synchronous standbys it is plain on).
	if _, err := l.conn.Exec(ctx, "SET synchronous_commit = remote_apply"); err != nil {
		return fmt.Errorf("postgres session for creating database %s: %w", name, err)
	}
	if _, err := l.conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create postgres database %s (or create it as an administrator, owned by the user vmha connects as): %w", name, err)
	}
	return nil
}

// upgradeSchema runs Temporal's own schema tool as temporal-sql-tool does (setup-schema -v 0.0, then update-schema
// with the versioned files embedded in the server module). A schema newer than this server's is left alone: the
// server checks at start that it can use it.
func upgradeSchema(conf *config.SQL, schemaName string, logger log.Logger) error {
	conn, err := sqltool.NewConnection(conf, logger)
	if err != nil {
		return fmt.Errorf("connect to postgres database %s: %w", conf.DatabaseName, err)
	}
	defer conn.Close()
	if err := schema.NewSetupSchemaTask(conn, &schema.SetupConfig{InitialVersion: "0.0"}, logger).Run(); err != nil {
		return fmt.Errorf("set up schema versioning in postgres database %s: %w", conf.DatabaseName, err)
	}
	update := &schema.UpdateConfig{DBName: conf.DatabaseName, SchemaName: schemaName}
	if err := schema.NewUpdateSchemaTask(conn, update, logger).Run(); err != nil {
		return fmt.Errorf("update schema of postgres database %s from %s: %w", conf.DatabaseName, schemaName, err)
	}
	return nil
}
