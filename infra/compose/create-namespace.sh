#!/bin/sh
# Creates vmha's namespace and the search attributes its workflows set (names from types/ids.go). Idempotent: an
# existing namespace is left as it is, and the server skips search attributes that already exist with the same type
# (the CLI refuses one that exists with another type, which then needs an operator's decision).
set -eu
: "${TEMPORAL_ADDRESS:?}"
ns=${VMHA_NAMESPACE:-vmha}
retention=${VMHA_RETENTION:-7d}

# retry runs its arguments until they succeed, for about two minutes: the server may still be starting, and a
# namespace just created can take a few seconds to be known by every frontend.
retry() {
	attempt=1
	until "$@"; do
		if [ "$attempt" -ge 60 ]; then
			echo "vmha: giving up after $attempt attempts: $*" >&2
			return 1
		fi
		attempt=$((attempt + 1))
		sleep 2
	done
}

retry temporal operator cluster health --address "$TEMPORAL_ADDRESS"

# Describe first on every attempt: a create that reached the server but whose answer was lost must not fail forever.
ensure_namespace() {
	temporal operator namespace describe --namespace "$ns" --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1 ||
		temporal operator namespace create --namespace "$ns" --retention "$retention" --address "$TEMPORAL_ADDRESS"
}

retry ensure_namespace

retry temporal operator search-attribute create --namespace "$ns" --address "$TEMPORAL_ADDRESS" \
	--name VmhaHost --type Keyword \
	--name VmhaHostState --type Keyword \
	--name VmhaHostStateSince --type Datetime
temporal operator search-attribute list --namespace "$ns" --address "$TEMPORAL_ADDRESS"
