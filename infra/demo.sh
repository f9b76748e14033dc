#!/usr/bin/env bash
# demo.sh: vmha's main job on one machine, what `make run` starts and `make stop` stops.
#
# start: a 3-host lab (infra/lab/lab.sh), the embedded Temporal server with its Web UI and the controller
# (`vmha server`, listening on the lab bridge so the hosts' workers reach it), the lab's inventory applied, and
# one small HA VM created through vmha's own CreateVM workflow. Then it prints what to try.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly LAB=$ROOT/infra/lab/lab.sh
readonly STATE=$ROOT/.vmha
export VMHA_BIN=${VMHA_BIN:-$ROOT/bin/vmha}
export VMHA_LAB_DIR=${VMHA_LAB_DIR:-/tmp/vmha-lab}
export VMHA_TEMPORAL_ADDRESS=${VMHA_TEMPORAL_ADDRESS:-10.250.0.1:7233}
export VMHA_NAMESPACE=${VMHA_NAMESPACE:-vmha}
export VMHA_DATA_DIR=${VMHA_DATA_DIR:-$STATE/data}
export VMHA_UI_PORT=${VMHA_UI_PORT:-8233}
# The controller reads the hosts' storage heartbeats from the share (hung-host detection).
export VMHA_SHARE_PATH=${VMHA_SHARE_PATH:-$VMHA_LAB_DIR/share}
readonly VM=${VMHA_DEMO_VM:-demo}

die() { echo "demo: $*" >&2; exit 1; }

server_pid() { [[ -f $STATE/server.pid ]] && kill -0 "$(cat "$STATE/server.pid")" 2>/dev/null && cat "$STATE/server.pid"; }

stop() {
	local pid
	if pid=$(server_pid); then
		kill "$pid"
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
	fi
	rm -f "$STATE/server.pid"
	"$LAB" down
}

wait_for() { # SECONDS DESCRIPTION COMMAND...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out waiting for $what (logs: $STATE/server.log, $VMHA_LAB_DIR/hv*/worker.log)"
		sleep 0.5
	done
}

all_healthy() { [[ $("$VMHA_BIN" hosts | grep -c ' healthy ') == 3 ]]; }

start() {
	[[ -x $VMHA_BIN ]] || die "$VMHA_BIN missing: run make build"
	mkdir -p "$STATE"
	trap 'echo "demo: failed; stopping what started (make stop)" >&2; stop' ERR
	"$LAB" up 3
	if ! server_pid >/dev/null; then
		# The lab starts afresh, so does vmha's history: a history left by an older build of vmha may not replay
		# under this one's workflow code (its monitors would stall), and it names VMs the new lab does not have.
		rm -rf "$VMHA_DATA_DIR"
		"$VMHA_BIN" server >"$STATE/server.log" 2>&1 &
		echo $! >"$STATE/server.pid"
	fi
	wait_for 60 "the Temporal frontend at $VMHA_TEMPORAL_ADDRESS" "$VMHA_BIN" hosts
	"$LAB" inventory >"$STATE/inventory.yaml"
	"$VMHA_BIN" apply -f "$STATE/inventory.yaml"
	wait_for 60 "3 healthy hosts" all_healthy
	if ! "$LAB" domains | cut -f2 | grep -qx "$VM"; then
		"$VMHA_BIN" create-vm --name "$VM" --image "$VMHA_LAB_DIR/share/images/tiny.qcow2" --vcpus 1 --memory-mib 64 --priority 10
	fi
	trap - ERR
	local host
	host=$("$LAB" domains | awk -v vm="$VM" '$2 == vm && $3 == "running" {print $1}')
	cat <<MSG

vmha is running: 3 hypervisors (hv1..hv3), the embedded Temporal with its Web UI, the controller.
$("$VMHA_BIN" hosts)

VM '$VM' runs on $host.

  Web UI (filter with VmhaHost="$host"):            http://${VMHA_UI_ADDRESS:-127.0.0.1}:$VMHA_UI_PORT/namespaces/$VMHA_NAMESPACE/workflows
  Pull the plug on $host through its BMC:             infra/lab/lab.sh power-off $host
  Where does '$VM' run now (every host, via virsh):  infra/lab/lab.sh domains
  Host states, then recent recoveries:                VMHA_TEMPORAL_ADDRESS=$VMHA_TEMPORAL_ADDRESS bin/vmha hosts
                                                      VMHA_TEMPORAL_ADDRESS=$VMHA_TEMPORAL_ADDRESS bin/vmha recoveries
  Cut a host's network while it keeps running:        infra/lab/lab.sh cut hv3   (vmha alerts "isolated", moves nothing)
  Fail a host over (vmha powers it off first):        VMHA_TEMPORAL_ADDRESS=$VMHA_TEMPORAL_ADDRESS bin/vmha failover --host hv3 --fence --reason test
  The whole cluster on one screen:                    VMHA_TEMPORAL_ADDRESS=$VMHA_TEMPORAL_ADDRESS bin/vmha status
  Stop everything:                                    make stop
MSG
}

case ${1:-start} in
start) start ;;
stop) stop ;;
*) die "usage: demo.sh start|stop" ;;
esac
