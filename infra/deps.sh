#!/usr/bin/env bash
# deps.sh: install what vmha needs on a Debian machine, only what is missing (make run / make test call it).
# Debian packages for libvirt + QEMU, IPMI (ipmi_sim, ipmitool), the lab (tini, iproute2) and the Web UI test
# (chromium); the users and groups libvirtd resolves before reading its config.
set -euo pipefail

readonly PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils
	openipmi ipmitool tini iproute2 pkg-config gcc chromium)

as_root() {
	if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

command -v go >/dev/null || { echo "deps: Go is missing: install Go 1.26.8 (https://go.dev/dl/) at /usr/local/go" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "deps: installing ${missing[*]}" >&2
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
fi

# libvirtd resolves its default qemu user before it reads qemu.conf.
for g in kvm libvirt-qemu; do
	getent group "$g" >/dev/null || as_root groupadd -r "$g"
done
getent passwd libvirt-qemu >/dev/null || as_root useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
