#!/bin/sh
# Creates (or upgrades) Temporal's two PostgreSQL databases. Every step is idempotent: create-database ignores an
# existing database, setup-schema keeps a version above 0.0, update-schema applies only the missing versions.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
port=${DB_PORT:-5432}
schema=/etc/temporal/schema/postgresql/v12

sqltool() {
	temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$port" -u "$POSTGRES_USER" "$@"
}

for db in temporal temporal_visibility; do
	dir=temporal
	[ "$db" = temporal_visibility ] && dir=visibility
	echo "vmha: schema of $db"
	sqltool --db "$db" create-database
	sqltool --db "$db" setup-schema -v 0.0
	sqltool --db "$db" update-schema -d "$schema/$dir/versioned"
done
echo "vmha: schemas ready"
