#!/usr/bin/env bash
# deps.sh: install what vmha needs on a Debian machine, only what is missing.
#
#   infra/deps.sh run    what running needs (make run, make build): libvirt + QEMU, IPMI (ipmi_sim, ipmitool), the
#                        lab (tini, iproute2), the cgo toolchain for libvirt's bindings (gcc, pkg-config, libvirt-dev),
#                        and the users and groups libvirtd resolves before reading its config
#   infra/deps.sh test   what only the tests need, on top (make test): chromium (the Web UI scenario), prometheus
#                        (its promtool checks infra/monitoring's alert rules), postgresql (the Temporal cluster test
#                        in tests/production starts its own server in a temp dir) and systemd
#                        (systemd-analyze verifies infra/systemd's units)
set -euo pipefail

readonly RUN_PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
	openipmi ipmitool tini iproute2 pkg-config gcc)
readonly TEST_PACKAGES=(chromium prometheus postgresql systemd)

as_root() {
	if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

missing() { # PACKAGE...: prints those not installed
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
	done
}

# apt_install WHAT HOW-LONG PACKAGE...: one apt-get install of those missing, announced with what they are for.
apt_install() {
	local what=$1 how_long=$2
	shift 2
	local todo
	mapfile -t todo < <(missing "$@")
	((${#todo[@]})) || return 0
	echo "deps: installing $what: ${todo[*]} (apt-get, $how_long)" >&2
	# The package lists are refreshed only when there are none or the install fails with them (make test then
	# does not refresh what make run just did).
	if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && install_now "${todo[@]}" 2>/dev/null; then
		return 0
	fi
	as_root apt-get update -qq
	install_now "${todo[@]}"
}

install_now() {
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confold "$@" >/dev/null
}

mode=${1:-run}
case $mode in
run | test) ;;
*) echo "usage: deps.sh [run|test]" >&2; exit 2 ;;
esac

command -v go >/dev/null || { echo "deps: Go is missing: install Go 1.26.8 (https://go.dev/dl/) at /usr/local/go" >&2; exit 1; }

apt_install "what running needs (libvirt, QEMU, IPMI, the lab's tools, gcc)" "usually 1 to 3 minutes the first time" \
	"${RUN_PACKAGES[@]}"

# libvirtd resolves its default qemu user before it reads qemu.conf.
for g in kvm libvirt-qemu; do
	getent group "$g" >/dev/null || as_root groupadd -r "$g"
done
getent passwd libvirt-qemu >/dev/null || as_root useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

[[ $mode == test ]] || exit 0

new_prometheus=$(missing prometheus)
new_postgresql=$(missing postgresql)
apt_install "what only the tests need (chromium for the Web UI scenario, prometheus for promtool, postgresql for the cluster test, systemd for systemd-analyze)" \
	"usually 1 to 2 minutes the first time" "${TEST_PACKAGES[@]}"
# Only promtool is wanted: where systemd runs, the package also enabled and started a Prometheus server on :9090.
if [[ -n $new_prometheus && -d /run/systemd/system ]]; then
	echo "deps: prometheus was installed for promtool only: stopping and disabling its server (prometheus.service)" >&2
	as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
# Likewise the cluster test starts its own PostgreSQL: the package's own server (postgresql.service) is not wanted.
if [[ -n $new_postgresql && -d /run/systemd/system ]]; then
	echo "deps: postgresql was installed for the cluster test only: stopping and disabling its server (postgresql.service)" >&2
	as_root systemctl disable --now postgresql.service >/dev/null 2>&1 || true
fi
