#!/usr/bin/env bash
# demo.sh: vmha's main job on one machine, what `make run` starts and `make stop` stops.
#
# start: a 3-host lab (infra/lab/lab.sh), the embedded Temporal server with its Web UI and the controller
# (`vmha server`, listening on the lab bridge so the hosts' workers reach it), the lab's inventory applied, and
# one small HA VM created through vmha's own CreateVM workflow. Then it prints what to try.
#
# Every connection to the frontend is mutual TLS: a CA made once in $STATE/pki (kept across runs), a server
# certificate for the frontend's address, each lab host's own hypervisor certificate (VMHA_LAB_PKI), and an operator
# certificate for the CLI, which $STATE/operator.env points at.
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
readonly PKI=$STATE/pki
readonly OPERATOR_ENV=$STATE/operator.env
# The demo picks every certificate itself: a shell that sourced operator.env must not make the embedded controller
# present the operator's certificate (it could not poll), nor ask for a plaintext server.
unset VMHA_TLS_CERT VMHA_TLS_KEY VMHA_TLS_CA VMHA_TLS_SERVER_NAME VMHA_SERVER_PLAINTEXT

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

# cli runs vmha's CLI as the demo's operator.
cli() {
	VMHA_TLS_CERT=$PKI/operator-demo.pem VMHA_TLS_KEY=$PKI/operator-demo-key.pem VMHA_TLS_CA=$PKI/ca.pem "$VMHA_BIN" "$@"
}

all_healthy() { [[ $(cli hosts | grep -c ' healthy ') == 3 ]]; }

# pki makes what lasts across runs: the CA, the operator's certificate and the env file of the CLI. The lab issues
# each host's certificate from the same CA (VMHA_LAB_PKI).
pki() {
	[[ -s $PKI/ca.pem ]] || "$VMHA_BIN" certs ca --dir "$PKI" --name "vmha demo CA" >/dev/null
	[[ -s $PKI/operator-demo.pem ]] || "$VMHA_BIN" certs issue --dir "$PKI" --role operator --name demo >/dev/null
	{
		echo "# vmha's CLI against the demo (make run), as its operator over mTLS: source this file, then run bin/vmha."
		local v
		for v in VMHA_TEMPORAL_ADDRESS VMHA_NAMESPACE; do printf 'export %s=%q\n' "$v" "${!v}"; done
		printf 'export VMHA_TLS_CERT=%q\nexport VMHA_TLS_KEY=%q\nexport VMHA_TLS_CA=%q\n' \
			"$PKI/operator-demo.pem" "$PKI/operator-demo-key.pem" "$PKI/ca.pem"
	} >"$OPERATOR_ENV"
}

# server_cert issues the frontend's certificate afresh for the address it is about to listen on (VMHA_TEMPORAL_ADDRESS
# may differ from the last run's), with the lab bridge's and loopback's addresses too.
server_cert() {
	local host=${VMHA_TEMPORAL_ADDRESS%:*} ips
	host=${host#\[} host=${host%\]}
	ips=$(printf '%s\n' "$host" 10.250.0.1 127.0.0.1 | awk '!seen[$0]++' | paste -sd,)
	rm -f "$PKI/server-demo.pem" "$PKI/server-demo-key.pem"
	"$VMHA_BIN" certs issue --dir "$PKI" --role server --name demo --dns localhost --ip "$ips" >/dev/null
}

start() {
	[[ -x $VMHA_BIN ]] || die "$VMHA_BIN missing: run make build"
	mkdir -p "$STATE"
	trap 'echo "demo: failed; stopping what started (make stop)" >&2; stop' ERR
	pki
	VMHA_LAB_PKI=$PKI "$LAB" up 3
	if ! server_pid >/dev/null; then
		# The lab starts afresh, so does vmha's history: a history left by an older build of vmha may not replay
		# under this one's workflow code (its monitors would stall), and it names VMs the new lab does not have.
		rm -rf "$VMHA_DATA_DIR"
		server_cert
		VMHA_SERVER_TLS_CERT=$PKI/server-demo.pem VMHA_SERVER_TLS_KEY=$PKI/server-demo-key.pem VMHA_SERVER_TLS_CLIENT_CA=$PKI/ca.pem \
			"$VMHA_BIN" server >"$STATE/server.log" 2>&1 &
		echo $! >"$STATE/server.pid"
	fi
	wait_for 60 "the Temporal frontend at $VMHA_TEMPORAL_ADDRESS" cli hosts
	"$LAB" inventory >"$STATE/inventory.yaml"
	cli apply -f "$STATE/inventory.yaml"
	wait_for 60 "3 healthy hosts" all_healthy
	if ! "$LAB" domains | cut -f2 | grep -qx "$VM"; then
		cli create-vm --name "$VM" --image "$VMHA_LAB_DIR/share/images/tiny.qcow2" --vcpus 1 --memory-mib 64 --priority 10
	fi
	trap - ERR
	local host env=${OPERATOR_ENV#"$PWD"/} pki=${PKI#"$PWD"/}
	host=$("$LAB" domains | awk -v vm="$VM" '$2 == vm && $3 == "running" {print $1}')
	cat <<MSG

vmha is running: 3 hypervisors (hv1..hv3), the embedded Temporal with its Web UI, the controller; mTLS on every
connection to Temporal (CA and certificates in $pki).
$(cli hosts)

VM '$VM' runs on $host.

  Web UI (filter with VmhaHost="$host"):            http://${VMHA_UI_ADDRESS:-127.0.0.1}:$VMHA_UI_PORT/namespaces/$VMHA_NAMESPACE/workflows
  The CLI as operator (address, certificate, CA):     source $env
  Pull the plug on $host through its BMC:             infra/lab/lab.sh power-off $host
  Where does '$VM' run now (every host, via virsh):  infra/lab/lab.sh domains
  Host states, then recent recoveries:                bin/vmha hosts
                                                      bin/vmha recoveries
  Cut a host's network while it keeps running:        infra/lab/lab.sh cut hv3   (vmha alerts "isolated", moves nothing)
  Fail a host over (vmha powers it off first):        bin/vmha failover --host hv3 --fence --reason test
  The whole cluster on one screen:                    bin/vmha status
  Workflows with the Temporal CLI (make test installs it):
    bin/tools/temporal workflow list --address $VMHA_TEMPORAL_ADDRESS --namespace $VMHA_NAMESPACE \\
      --tls-cert-path $pki/operator-demo.pem --tls-key-path $pki/operator-demo-key.pem --tls-ca-path $pki/ca.pem
  Stop everything:                                    make stop
MSG
}

case ${1:-start} in
start) start ;;
stop) stop ;;
*) die "usage: demo.sh start|stop" ;;
esac
