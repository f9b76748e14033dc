#!/usr/bin/env bash
# lab.sh: a lab of simulated hypervisor hosts on this machine, for vmha's end-to-end tests.
#
# Each host hvK is a network namespace (vmha-hvK, address 10.250.0.(10+K) on bridge labbr0) with its own PID,
# mount and UTS namespaces under tini, running virtlockd (disk leases, lock files in $VMHA_LAB_DIR/share/vmha/locks),
# libvirtd (qemu+tcp, no auth, lock_manager = "lockd") and, when $VMHA_BIN is set, the vmha
# hypervisor worker under a restart loop. Each host has a BMC: an OpenIPMI ipmi_sim on 127.0.0.1:(9622+K) whose
# chassis power control really kills or boots the host. $VMHA_LAB_DIR/share is the shared storage (NFS stand-in),
# visible at the same path in every host; `up` prepares it with `$VMHA_BIN share init` (the share marker).
#
# Usage: lab.sh COMMAND [ARGS]   (state in $VMHA_LAB_DIR, default /tmp/vmha-lab)
#   up [N]                 bring up N hosts (default 3); idempotent, boots hosts that are off
#   down [--keep]          stop everything the lab started, delete its network; remove the state unless --keep
#   status                 per host: power, link, libvirtd, worker, domains
#   power-off HOST         chassis power off through the host's BMC (ipmitool lanplus)
#   power-on HOST          chassis power on through the host's BMC; waits until libvirtd answers
#   cut HOST | restore HOST  take the host's link down / up; the host keeps running
#   kill-worker HOST       SIGKILL the host's vmha worker (its restart loop starts it again)
#   virsh HOST ARGS...     virsh -c qemu+tcp://ADDRESS/system ARGS...
#   hide-share HOST | show-share HOST  bind-mount an empty directory over the share in the host's mount namespace
#                          (a failed `nofail` NFS mount), or remove it again
#   shadow HOST FILE | unshadow HOST FILE  bind-mount a private copy of FILE over FILE in the host's mount
#                          namespace (QEMU's own image lock then sees another file; virtlockd's lease, keyed by the
#                          path, is still the same), or remove it again
#   hold-worker HOST VM    the next time VM's QEMU has started on HOST (libvirt's "started" hook), SIGKILL the host's
#                          vmha worker and keep it down (an activity's outcome lost between start and commit)
#   release-worker HOST    let the host's worker start again (a power cycle releases it too)
#   hang HOST              freeze the whole host (SIGSTOP every process of its PID namespace: libvirtd, QEMU,
#                          virtlockd, the worker) and take its link down; its BMC still says on. Prints the instant
#                          of the freeze (microseconds since the epoch). A power-off kills a hung host for real.
#   thaw HOST              continue a hung host and bring its link up (nothing to do once it was powered off)
#   bmc-off HOST | bmc-on HOST  the host's BMC (ipmi_sim) dies / comes back; the host's power does not change
#   pull-plug HOST         the host and its BMC lose power together (one supply): bmc-off, then the host halts
#   storage-cut HOST | storage-restore HOST  the host loses the share while its network works (hide-share /
#                          show-share)
#   watchdog HOST on [TIMEOUT] | watchdog HOST off  the host's worker arms (or not) the host's lab watchdog, with
#                          VMHA_WATCHDOG_TIMEOUT=TIMEOUT (default 4s), from its next start (boot or kill-worker).
#                          Every host has a watchdog: a process outside the host (hardware, like its BMC) reading
#                          the FIFO hvK/watchdog (VMHA_WATCHDOG_DEVICE=file:...), which powers the host off through
#                          the chassis path when not petted in time. `VMHA_LAB_WATCHDOG=TIMEOUT lab.sh up` arms it
#                          on every host; by default no worker arms it.
#   domains                "HOST<TAB>DOMAIN<TAB>STATE" for every domain of every powered host ("HOST" alone: none)
#   inventory              print a vmha inventory (YAML) of the lab
#   bmc-port HOST | address HOST | password-file HOST
#
# VMHA_LAB_PKI=DIR (a CA made by `vmha certs ca --dir DIR`): `up` issues each host a hypervisor certificate named
# after it (DIR/hypervisor-hvK.pem), and its worker dials Temporal with it (mTLS; VMHA_TLS_CA defaults to DIR/ca.pem).
set -euo pipefail
shopt -s inherit_errexit

readonly LAB_DIR=${VMHA_LAB_DIR:-/tmp/vmha-lab}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
readonly SELF
readonly BRIDGE=labbr0
readonly NET_PREFIX=10.250.0
readonly BRIDGE_CIDR=10.250.0.1/24
readonly BMC_BASE_PORT=9622
readonly MAX_HOSTS=40
readonly BOOT_TIMEOUT_S=30
readonly PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils openipmi ipmitool tini iproute2)

die() { echo "lab: $*" >&2; exit 1; }
note() { echo "lab: $*" >&2; }

now() { echo "${EPOCHREALTIME/./}"; }                       # microseconds
elapsed() { local us=$(($(now) - $1)); printf '%d.%03ds' $((us / 1000000)) $((us % 1000000 / 1000)); }

# ---------- names ----------

host_index() { # hvK -> K, or die
	[[ $1 =~ ^hv([1-9][0-9]*)$ ]] || die "host '$1': want hv1, hv2, ..."
	local k=${BASH_REMATCH[1]} n
	n=$(lab_size)
	((k <= n)) || die "host '$1': the lab at $LAB_DIR has hosts hv1..hv$n"
	echo "$k"
}
host_addr() { echo "$NET_PREFIX.$((10 + $1))"; }
bmc_port() { echo $((BMC_BASE_PORT + $1)); }
host_dir() { echo "$LAB_DIR/hv$1"; }
netns_of() { echo "vmha-hv$1"; }
veth_of() { echo "vhv$1"; }
passfile_of() { echo "$LAB_DIR/secrets/hv$1.bmc"; }

lab_size() {
	[[ -f $LAB_DIR/lab.conf ]] || die "no lab at $LAB_DIR (run: lab.sh up)"
	local n
	n=$(sed -n 's/^N=//p' "$LAB_DIR/lab.conf")
	[[ $n =~ ^[0-9]+$ ]] || die "$LAB_DIR/lab.conf: no N= line"
	echo "$n"
}

# ---------- processes (always by PID, checked to still be ours) ----------

# alive PID: the process exists and is not a zombie.
alive() {
	local stat
	[[ $1 =~ ^[0-9]+$ ]] || return 1
	{ read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z && ${stat:0:1} != X ]]
}

netns_exists() { [[ -e /run/netns/$1 ]]; }

# in_netns PID NETNS: the process lives in that network namespace.
in_netns() { [[ $(ip netns identify "$1" 2>/dev/null) == "$2" ]]; }

# netns_pids NETNS: live processes in the namespace (every process of a simulated host is there).
netns_pids() {
	local p
	for p in $(ip netns pids "$1" 2>/dev/null || true); do
		alive "$p" && echo "$p"
	done
	return 0
}

# host_on K: the host's init (its "power") is running.
host_on() {
	local pid comm
	{ read -r pid <"$(host_dir "$1")/power.pid"; } 2>/dev/null || return 1
	alive "$pid" && { read -r comm <"/proc/$pid/comm"; } 2>/dev/null && [[ $comm == tini ]] &&
		in_netns "$pid" "$(netns_of "$1")"
}

# ns_to_host_pid K NSPID: the root-namespace PID of the host's process NSPID (as seen inside the host).
ns_to_host_pid() {
	local p line
	for p in $(netns_pids "$(netns_of "$1")"); do
		line=$(grep '^NSpid:' "/proc/$p/status" 2>/dev/null) || continue
		# Two levels: the machine's PID, then the host's. Processes outside the host's PID namespace have one.
		[[ $line =~ ^NSpid:[[:space:]]+[0-9]+[[:space:]]+([0-9]+)$ && ${BASH_REMATCH[1]} == "$2" ]] && { echo "$p"; return 0; }
	done
	return 1
}

wait_gone() { # wait_gone SECONDS PID...: 0 once none is alive
	local deadline=$(($(now) + $1 * 1000000)) p left
	shift
	while :; do
		left=0
		for p in "$@"; do alive "$p" && left=1; done
		((left == 0)) && return 0
		(($(now) > deadline)) && return 1
		sleep 0.02
	done
}

# ---------- packages ----------

ensure_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
	done
	if ((${#missing[@]})); then
		note "installing ${missing[*]}"
		local install=(apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold
			-o DPkg::Lock::Timeout=600 "${missing[@]}")
		# A machine that never ran apt-get update has no package lists: update once and retry.
		DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2 ||
			{ apt-get -o DPkg::Lock::Timeout=600 update >&2 && DEBIAN_FRONTEND=noninteractive "${install[@]}" >&2; } ||
			die "apt-get install ${missing[*]} failed"
	fi
	# libvirtd resolves its default qemu user before it reads qemu.conf.
	getent group kvm >/dev/null || groupadd -r kvm
	getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
	id -u libvirt-qemu >/dev/null 2>&1 ||
		useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}

# ---------- network ----------

bridge_owner() { # the lab directory recorded on the bridge; empty without a bridge
	local line
	line=$(ip -o link show "$BRIDGE" 2>/dev/null) || return 0
	[[ $line =~ alias\ vmha-lab:([^ ]+) ]] && echo "${BASH_REMATCH[1]}"
	return 0
}

ensure_bridge() {
	if ip link show "$BRIDGE" >/dev/null 2>&1; then
		local owner
		owner=$(bridge_owner)
		[[ $owner == "$LAB_DIR" ]] || die "$BRIDGE exists and belongs to ${owner:-something else} (not $LAB_DIR): run its lab.sh down first"
	else
		ip link add "$BRIDGE" type bridge
		ip link set "$BRIDGE" alias "vmha-lab:$LAB_DIR"
	fi
	[[ $(ip -4 addr show dev "$BRIDGE") == *"inet $BRIDGE_CIDR "* ]] || ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
	ip link set "$BRIDGE" up
}

ensure_host_net() {
	local k=$1 ns veth
	ns=$(netns_of "$k") veth=$(veth_of "$k")
	netns_exists "$ns" || ip netns add "$ns"
	if ! ip link show "$veth" >/dev/null 2>&1; then
		ip netns exec "$ns" ip link del eth1 2>/dev/null || true
		ip link add "$veth" type veth peer name eth1 netns "$ns"
	fi
	ip link set "$veth" master "$BRIDGE"
	ip link set "$veth" up
	ip -n "$ns" link set lo up
	[[ $(ip -n "$ns" -4 addr show dev eth1) == *"inet $(host_addr "$k")/24 "* ]] ||
		ip -n "$ns" addr add "$(host_addr "$k")/24" dev eth1
	ip -n "$ns" link set eth1 up
}

# ---------- host config ----------

write_host_config() {
	local k=$1 hd
	hd=$(host_dir "$k")
	mkdir -p "$hd"/{etc,run,lib,log,cache,bmc/state}
	cat >"$hd/etc/libvirtd.conf" <<-EOF
		listen_tls = 0
		listen_tcp = 1
		listen_addr = "$(host_addr "$k")"
		auth_tcp = "none"
		auth_unix_rw = "none"
		auth_unix_ro = "none"
	EOF
	# No systemd, cgroups, virtlogd or security drivers here: see FACTS.md.
	cat >"$hd/etc/qemu.conf" <<-'EOF'
		user = "root"
		group = "root"
		dynamic_ownership = 0
		remember_owner = 0
		cgroup_controllers = [ ]
		security_driver = "none"
		stdio_handler = "file"
		lock_manager = "lockd"
	EOF
	# Disk leases, as on a production host: libvirt takes a lease on every disk from the host's virtlockd before
	# the guest's CPUs run; the leases are lock files on the share, so a second host's start of a running VM fails.
	# (In the lab QEMU's own image lock, one kernel, usually refuses such a start first: see FACTS.md.)
	cat >"$hd/etc/qemu-lockd.conf" <<-EOF
		auto_disk_leases = 1
		require_lease_for_disks = 1
		file_lockspace_dir = "$(lockspace_dir)"
	EOF
	cat >"$hd/etc/virtlockd.conf" <<-'EOF'
		log_outputs = "3:stderr"
	EOF
	# libvirt's qemu hook (libvirtd looks for it once, at start): does nothing unless hold-worker armed it.
	mkdir -p "$hd/etc/hooks"
	cat >"$hd/etc/hooks/qemu" <<-EOF
		#!/bin/bash
		# lab.sh hold-worker: called by libvirtd as "qemu NAME OPERATION SUB-OPERATION -", the domain XML on stdin.
		cat >/dev/null
		[[ \$2 == started && -f $hd/hold-worker-on && \$(cat $hd/hold-worker-on) == "\$1" ]] || exit 0
		rm -f $hd/hold-worker-on
		touch $hd/worker.hold
		pid=\$(cat $hd/worker.pid 2>/dev/null) && kill -KILL "\$pid" 2>/dev/null
		echo "lab hook: \$1 started: worker (pid \$pid) killed and held \$(date -Is)" >>$hd/worker.log
		exit 0
	EOF
	chmod 755 "$hd/etc/hooks/qemu"
}

# lockspace_dir: virtlockd's lease files, on the share like the disks they guard.
lockspace_dir() { echo "$LAB_DIR/share/vmha/locks"; }

ensure_secret() {
	local f
	f=$(passfile_of "$1")
	[[ -s $f ]] && return 0
	local pw
	pw=$(head -c 48 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')
	(umask 077 && printf '%s\n' "${pw:0:16}" >"$f")
	chmod 600 "$f"
}

# ensure_host_cert K: with VMHA_LAB_PKI, hvK's hypervisor certificate (kept across ups: issuing refuses to overwrite).
ensure_host_cert() {
	[[ -n ${VMHA_LAB_PKI:-} ]] || return 0
	[[ -s $VMHA_LAB_PKI/hypervisor-hv$1.pem ]] && return 0
	[[ -x ${VMHA_BIN:-} ]] || die "VMHA_LAB_PKI=$VMHA_LAB_PKI: issuing hv$1's certificate needs VMHA_BIN"
	"$VMHA_BIN" certs issue --dir "$VMHA_LAB_PKI" --role hypervisor --name "hv$1" >/dev/null ||
		die "VMHA_LAB_PKI=$VMHA_LAB_PKI: vmha certs issue --role hypervisor --name hv$1 failed"
}

write_bmc_config() {
	local k=$1 bd
	bd=$(host_dir "$k")/bmc
	# ipmi_sim runs the chassis_control string through sh -c, appending "get power" / "set power 0|1".
	(umask 077 && cat >"$bd/lan.conf" <<-EOF
		name "bmc-hv$k"
		set_working_mc 0x20
		  startlan 1
		    addr 127.0.0.1 $(bmc_port "$k")
		    priv_limit admin
		    allowed_auths_callback md5
		    allowed_auths_user md5
		    allowed_auths_operator md5
		    allowed_auths_admin md5
		    guid $(printf 'a123456789abcdefa123456789ab%04x' "$k")
		  endlan
		  chassis_control "VMHA_LAB_DIR=$LAB_DIR $SELF _chassis hv$k"
		  user 2 true "admin" "$(cat "$(passfile_of "$k")")" admin 10 md5
	EOF
	)
	cat >"$bd/sim.emu" <<-'EOF'
		mc_setbmc 0x20
		mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
		sel_enable 0x20 1000 0x0a
		mc_enable 0x20
	EOF
}

bmc_running() { # bmc_running K: prints the ipmi_sim PID
	local bd pid
	bd=$(host_dir "$1")/bmc
	pid=$(cat "$bd/ipmi_sim.pid" 2>/dev/null) || return 1
	alive "$pid" && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"-c $bd/lan.conf "* ]] && echo "$pid"
}

ensure_bmc() {
	local k=$1 bd
	bd=$(host_dir "$k")/bmc
	bmc_running "$k" >/dev/null && return 0
	# Lock fds are closed so that a long-lived child never holds a lab lock.
	setsid ipmi_sim -c "$bd/lan.conf" -f "$bd/sim.emu" -s "$bd/state" -n \
		</dev/null >>"$bd/ipmi_sim.log" 2>&1 8>&- 9>&- &
	echo $! >"$bd/ipmi_sim.pid"
}

# ---------- the lab's hardware watchdog (one process per host, outside the host) ----------

watchdog_bin() { echo "$LAB_DIR/bin/lab-watchdog"; }
watchdog_fifo() { echo "$(host_dir "$1")/watchdog"; }

# ensure_watchdog_bin: build infra/lab/watchdog once per lab (or use $VMHA_LAB_WATCHDOG_BIN). Without Go there is
# no watchdog: a worker told to arm it then runs without (its heartbeat says so).
ensure_watchdog_bin() {
	local bin src go
	bin=$(watchdog_bin)
	[[ -x $bin ]] && return 0
	mkdir -p "$LAB_DIR/bin"
	if [[ -n ${VMHA_LAB_WATCHDOG_BIN:-} ]]; then
		cp "$VMHA_LAB_WATCHDOG_BIN" "$bin"
		return 0
	fi
	src=$(dirname "$SELF")/watchdog
	go=$(command -v go || echo /usr/local/go/bin/go)
	if [[ ! -d $src || ! -x $go ]]; then
		note "no Go toolchain or no $src: the lab has no watchdogs"
		return 0
	fi
	(cd "$src" && GOTOOLCHAIN=${GOTOOLCHAIN:-local} "$go" build -o "$bin.tmp" .) >&2 || die "build the lab watchdog ($src) failed"
	mv "$bin.tmp" "$bin"
}

watchdog_running() { # watchdog_running K: prints the watchdog's PID
	local pid
	pid=$(cat "$(host_dir "$1")/watchdog.pid" 2>/dev/null) || return 1
	alive "$pid" && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"-fifo $(watchdog_fifo "$1") "* ]] && echo "$pid"
}

ensure_watchdog() {
	local k=$1 hd fifo
	hd=$(host_dir "$k") fifo=$(watchdog_fifo "$k")
	[[ -x $(watchdog_bin) ]] || return 0
	[[ -p $fifo ]] || { rm -f "$fifo"; mkfifo -m 0600 "$fifo"; }
	watchdog_running "$k" >/dev/null && return 0
	setsid "$(watchdog_bin)" -host "hv$k" -fifo "$fifo" -boot "$hd/power.pid" -lab-sh "$SELF" \
		</dev/null >>"$hd/watchdog.log" 2>&1 8>&- 9>&- &
	echo $! >"$hd/watchdog.pid"
}

ipmi() { # ipmi K ARGS...: ipmitool against the host's BMC
	local k=$1
	shift
	ipmitool -I lanplus -C 3 -H 127.0.0.1 -p "$(bmc_port "$k")" -U admin -f "$(passfile_of "$k")" "$@"
}

# ---------- host power ----------

with_host_lock() { # with_host_lock K CMD...: serialises boots and kills of one host
	local k=$1
	shift
	(
		flock -w 60 9 || die "hv$k: lock busy"
		"$@"
	) 9>"$(host_dir "$k")/lock"
}

# boot K: start the host in the background (no-op when it runs). Returns once its init is known.
boot() {
	local k=$1 hd ns us tini="" deadline comm=""
	hd=$(host_dir "$k") ns=$(netns_of "$k")
	host_on "$k" && return 0
	kill_netns_procs "$k"
	rm -f "$hd/ready" "$hd/failed" "$hd/worker.pid" "$hd/power.pid" "$hd/worker.hold" "$hd/hold-worker-on" "$hd/hung"
	echo "=== boot $(date -Is)" >>"$hd/boot.log"
	setsid ip netns exec "$ns" unshare --mount --pid --uts --fork --mount-proc --propagation private --kill-child \
		tini -- "$SELF" _init "hv$k" </dev/null >>"$hd/boot.log" 2>&1 8>&- 9>&- &
	us=$!
	echo "$us" >"$hd/unshare.pid"
	deadline=$(($(now) + 5000000))
	while [[ -z $tini ]]; do
		(($(now) < deadline)) || die "hv$k: its init (tini) did not start; see $hd/boot.log"
		alive "$us" || die "hv$k: boot failed; see $hd/boot.log: $(tail -3 "$hd/boot.log")"
		# The host's init is the process of its namespaces that sees itself as PID 1, once it has exec'd tini
		# (before that it is still unshare's fork, and host_on would call the host off).
		tini=$(ns_to_host_pid "$k" 1) || tini=""
		comm=""
		[[ -n $tini ]] && { read -r comm <"/proc/$tini/comm"; } 2>/dev/null
		[[ $comm == tini ]] || tini=""
		[[ -n $tini ]] || sleep 0.01
	done
	echo "$tini" >"$hd/power.pid"
}

# kill_netns_procs K: SIGKILL every process in the host's network namespace and make sure they are gone.
kill_netns_procs() {
	local k=$1 ns pids
	ns=$(netns_of "$k")
	netns_exists "$ns" || return 0
	pids=$(netns_pids "$ns")
	[[ -z $pids ]] && return 0
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	# shellcheck disable=SC2086
	wait_gone 10 $pids || die "hv$k: processes survive SIGKILL: $(netns_pids "$ns" | tr '\n' ' ')"
}

# halt K: the power goes: the host's init dies and takes libvirtd, every qemu and the worker with it.
halt() {
	local k=$1 hd pid
	hd=$(host_dir "$k")
	if host_on "$k"; then
		pid=$(cat "$hd/power.pid")
		kill -KILL "$pid"
		wait_gone 10 "$pid" || die "hv$k: init $pid survives SIGKILL"
	fi
	kill_netns_procs "$k"
	local left
	left=$(netns_pids "$(netns_of "$k")")
	[[ -z $left ]] || die "hv$k: still running after power off: $left"
	rm -f "$hd/ready" "$hd/worker.pid" "$hd/power.pid" "$hd/hung"
}

# wait_ready K: until the host's libvirtd answers (its init writes "ready"), or fail with its logs.
wait_ready() {
	local k=$1 hd deadline
	hd=$(host_dir "$k")
	deadline=$(($(now) + BOOT_TIMEOUT_S * 1000000))
	until [[ -e $hd/ready ]]; do
		if [[ -e $hd/failed ]] || ! host_on "$k" || (($(now) > deadline)); then
			die "hv$k: did not come up: $(cat "$hd/failed" 2>/dev/null)
--- $hd/boot.log:
$(tail -5 "$hd/boot.log" 2>/dev/null)
--- $hd/libvirtd.log:
$(tail -5 "$hd/libvirtd.log" 2>/dev/null)"
		fi
		sleep 0.02
	done
}

# ---------- inside a host (run by tini as the host's first process) ----------

cmd_init() {
	local host=$1 k hd src dst rc
	k=${host#hv} hd=$LAB_DIR/$host
	# shellcheck source=/dev/null
	source "$LAB_DIR/env"
	hostname "$host"
	# /run is empty after a reboot.
	find "$hd/run" -mindepth 1 -delete
	for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt cache:/var/cache/libvirt; do
		src=$hd/${pair%%:*} dst=${pair#*:}
		mkdir -p "$src" "$dst"
		mount --bind "$src" "$dst"
	done
	# Autostart links stay, as on a real host: vmha itself must keep a returning host from starting a VM twice.
	# virtlockd first (its own pidfile: the default /run/virtlockd.pid is the machine's /run), then libvirtd.
	virtlockd -f /etc/libvirt/virtlockd.conf -p /run/libvirt/virtlockd.pid </dev/null >>"$hd/virtlockd.log" 2>&1 &
	local vdeadline=$(($(now) + 5000000))
	until [[ -S /run/libvirt/virtlockd-sock ]]; do
		if (($(now) > vdeadline)); then
			echo "virtlockd did not create /run/libvirt/virtlockd-sock" >"$hd/failed"
			exit 1
		fi
		sleep 0.01
	done
	libvirtd -l -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid </dev/null >>"$hd/libvirtd.log" 2>&1 &
	local deadline=$(($(now) + (BOOT_TIMEOUT_S - 5) * 1000000))
	until virsh -q -c qemu:///system uri >/dev/null 2>&1 &&
		virsh -q -c "qemu+tcp://$(host_addr "$k")/system" uri >/dev/null 2>&1; do
		if (($(now) > deadline)); then
			echo "libvirtd does not answer" >"$hd/failed"
			exit 1
		fi
		sleep 0.02
	done
	touch "$hd/ready"
	if [[ -z ${VMHA_BIN:-} ]]; then
		exec sleep infinity
	fi
	[[ -x $VMHA_BIN ]] || { echo "VMHA_BIN=$VMHA_BIN is not executable: no worker" >>"$hd/worker.log"; exec sleep infinity; }
	export VMHA_HOST_NAME=$host VMHA_LIBVIRT_URI=qemu:///system VMHA_SHARE_PATH=$LAB_DIR/share
	export VMHA_TEMPORAL_ADDRESS=${VMHA_TEMPORAL_ADDRESS:-$NET_PREFIX.1:7233} VMHA_NAMESPACE=${VMHA_NAMESPACE:-vmha}
	if [[ -n ${VMHA_LAB_PKI:-} ]]; then
		export VMHA_TLS_CERT=$VMHA_LAB_PKI/hypervisor-$host.pem VMHA_TLS_KEY=$VMHA_LAB_PKI/hypervisor-$host-key.pem
		export VMHA_TLS_CA=${VMHA_TLS_CA:-$VMHA_LAB_PKI/ca.pem}
	fi
	# A supervisor in miniature: a crashed worker comes back after a second.
	while :; do
		# lab.sh hold-worker keeps the worker down until release-worker.
		while [[ -e $hd/worker.hold ]]; do sleep 0.1; done
		# lab.sh watchdog HOST on|off: read at every start.
		if [[ -s $hd/watchdog.on && -p $hd/watchdog ]]; then
			export VMHA_WATCHDOG_DEVICE=file:$hd/watchdog VMHA_WATCHDOG_TIMEOUT
			VMHA_WATCHDOG_TIMEOUT=$(cat "$hd/watchdog.on")
		else
			unset VMHA_WATCHDOG_DEVICE VMHA_WATCHDOG_TIMEOUT
		fi
		echo "=== lab: starting $VMHA_BIN hypervisor (watchdog ${VMHA_WATCHDOG_DEVICE:-none} ${VMHA_WATCHDOG_TIMEOUT:-}) $(date -Is)" >>"$hd/worker.log"
		"$VMHA_BIN" hypervisor </dev/null >>"$hd/worker.log" 2>&1 &
		echo $! >"$hd/worker.pid"
		rc=0
		wait $! || rc=$?
		echo "=== lab: worker exited rc=$rc $(date -Is); restart in 1s" >>"$hd/worker.log"
		sleep 1
	done
}

# cmd_chassis HOST get power | set power 0|1: the BMC's chassis control (called by ipmi_sim, must be quick).
cmd_chassis() {
	local host=$1 op=${2:-} parm=${3:-} val=${4:-} k
	k=$(host_index "$host")
	case "$op $parm" in
	"get power")
		if host_on "$k"; then echo "power:1"; else echo "power:0"; fi
		;;
	"set power")
		case $val in
		0)
			with_host_lock "$k" halt "$k"
			ip link set "$(veth_of "$k")" down
			;;
		1)
			ip link set "$(veth_of "$k")" up
			with_host_lock "$k" boot "$k"
			;;
		*) die "chassis $host: set power $val: want 0 or 1" ;;
		esac
		;;
	# Power cycle is ipmi_sim's own "set power 0", then "set power 1" a second later.
	"set reset") # hard reset: the host dies and boots again; its link stays as it is
		with_host_lock "$k" halt "$k"
		with_host_lock "$k" boot "$k"
		;;
	"set shutdown") # soft shutdown: there is no OS to ask, so it is a power off
		with_host_lock "$k" halt "$k"
		ip link set "$(veth_of "$k")" down
		;;
	"set boot" | "set identify") ;; # accepted and ignored
	*) die "chassis $host: unsupported '$op $parm'" ;;
	esac
}

# ---------- commands ----------

write_env_file() {
	local v f=$LAB_DIR/env
	# VMHA_* settings may hold secrets (webhook secret, TLS key paths).
	(umask 077 && : >"$f.tmp")
	for v in ${!VMHA_@}; do
		printf 'export %s=%q\n' "$v" "${!v}" >>"$f.tmp"
	done
	mv "$f.tmp" "$f"
}

# prepare_share runs `vmha share init` on the lab's share (idempotent: an existing share keeps its ID). Without the
# share marker no worker serves the share queue or touches the catalog. Without $VMHA_BIN there is no worker either.
prepare_share() {
	if [[ -z ${VMHA_BIN:-} || ! -x ${VMHA_BIN:-} ]]; then
		note "VMHA_BIN not set or not executable: share not prepared (run: VMHA_SHARE_PATH=$LAB_DIR/share vmha share init)"
		return 0
	fi
	VMHA_SHARE_PATH=$LAB_DIR/share "$VMHA_BIN" share init >&2 || die "up: vmha share init on $LAB_DIR/share failed"
}

cmd_up() {
	local n=${1:-3} start k existing
	start=$(now)
	[[ $n =~ ^[1-9][0-9]*$ ]] && ((n <= MAX_HOSTS)) || die "up: host count '$n': want 1..$MAX_HOSTS"
	((EUID == 0)) || die "up: must run as root"
	[[ $LAB_DIR =~ ^/[A-Za-z0-9_./-]+$ ]] || die "VMHA_LAB_DIR=$LAB_DIR: want an absolute path of letters, digits, '_', '.', '/', '-'"
	[[ $SELF =~ ^/[A-Za-z0-9_./-]+$ ]] || die "$SELF: the script's path must be letters, digits, '_', '.', '/', '-' (ipmi_sim runs it through sh)"
	if [[ -f $LAB_DIR/lab.conf ]]; then
		existing=$(lab_size)
		((existing == n)) || die "up: the lab at $LAB_DIR has $existing hosts; run lab.sh down first to change it to $n"
	fi
	ensure_packages
	mkdir -p "$LAB_DIR/share/images" "$LAB_DIR/secrets"
	chmod 700 "$LAB_DIR/secrets"
	exec 8>"$LAB_DIR/lock"
	flock -w 120 8 || die "up: another lab.sh up/down holds $LAB_DIR/lock"
	echo "N=$n" >"$LAB_DIR/lab.conf"
	export VMHA_LAB_DIR=$LAB_DIR
	write_env_file
	[[ -f $LAB_DIR/share/images/tiny.qcow2 ]] ||
		qemu-img create -q -f qcow2 "$LAB_DIR/share/images/tiny.qcow2" 64M >&2
	prepare_share
	[[ -d $LAB_DIR/share/vmha ]] || install -d -m 0711 "$LAB_DIR/share/vmha"
	install -d -m 0700 "$(lockspace_dir)"
	ensure_bridge
	ensure_watchdog_bin
	for ((k = 1; k <= n; k++)); do
		ensure_host_net "$k"
		write_host_config "$k"
		ensure_secret "$k"
		ensure_host_cert "$k"
		write_bmc_config "$k"
		rm -f "$(host_dir "$k")/bmc/off"
		ensure_bmc "$k"
		ensure_watchdog "$k"
		if [[ -n ${VMHA_LAB_WATCHDOG:-} ]]; then
			set_watchdog "$k" on "$VMHA_LAB_WATCHDOG"
		fi
	done
	for ((k = 1; k <= n; k++)); do
		with_host_lock "$k" boot "$k"
	done
	for ((k = 1; k <= n; k++)); do
		wait_ready "$k"
		wait_link "$k"
	done
	# Prove each BMC chain end to end: ipmitool -> ipmi_sim -> chassis control -> this host's power.
	for ((k = 1; k <= n; k++)); do
		local out="" deadline=$(($(now) + 5000000))
		until out=$(ipmi "$k" -N 1 -R 1 chassis power status 2>&1) && [[ $out == "Chassis Power is on" ]]; do
			bmc_running "$k" >/dev/null || die "hv$k: its BMC (ipmi_sim) exited: $(tail -3 "$(host_dir "$k")/bmc/ipmi_sim.log" 2>/dev/null)"
			(($(now) < deadline)) || die "hv$k: BMC on 127.0.0.1:$(bmc_port "$k") does not report power on: $out
$(tail -5 "$(host_dir "$k")/bmc/ipmi_sim.log" 2>/dev/null)"
			sleep 0.05
		done
	done
	note "up: $n hosts in $LAB_DIR ($(elapsed "$start"))"
}

cmd_down() {
	local keep=0 k n=0 ns start
	start=$(now)
	[[ ${1:-} == --keep ]] && keep=1
	[[ -n ${1:-} && ${1:-} != --keep ]] && die "down: unknown argument '$1' (want --keep)"
	if [[ -f $LAB_DIR/lab.conf ]]; then
		n=$(lab_size)
		exec 8>"$LAB_DIR/lock"
		flock -w 120 8 || die "down: another lab.sh up/down holds $LAB_DIR/lock"
	fi
	local owner
	owner=$(bridge_owner)
	if [[ -n $owner && $owner != "$LAB_DIR" ]]; then
		note "down: $BRIDGE belongs to the lab at $owner: leaving the network alone"
	fi
	# Hosts: the recorded ones, plus any namespace of ours left by a failed up.
	local hosts=()
	for ((k = 1; k <= n; k++)); do hosts+=("$k"); done
	if [[ -z $owner || $owner == "$LAB_DIR" ]]; then
		for ns in $(ip netns list | awk '{print $1}' | grep -E '^vmha-hv[0-9]+$' || true); do
			k=${ns#vmha-hv}
			((k > n)) && hosts+=("$k")
		done
	fi
	local bmcpids=() pid
	for k in "${hosts[@]}"; do
		if pid=$(bmc_running "$k"); then
			kill -TERM "$pid" 2>/dev/null || true
			bmcpids+=("$pid")
		fi
		if pid=$(watchdog_running "$k"); then
			kill -TERM "$pid" 2>/dev/null || true
			bmcpids+=("$pid")
		fi
		[[ -d $(host_dir "$k") ]] && with_host_lock "$k" halt "$k" || kill_netns_procs "$k"
	done
	if ((${#bmcpids[@]})); then
		wait_gone 5 "${bmcpids[@]}" || { kill -KILL "${bmcpids[@]}" 2>/dev/null || true; wait_gone 5 "${bmcpids[@]}" || die "down: ipmi_sim ${bmcpids[*]} survive SIGKILL"; }
	fi
	if [[ -z $owner || $owner == "$LAB_DIR" ]]; then
		for k in "${hosts[@]}"; do
			ip link del "$(veth_of "$k")" 2>/dev/null || true
			ip netns del "$(netns_of "$k")" 2>/dev/null || true
		done
		ip link del "$BRIDGE" 2>/dev/null || true
	fi
	# Host mounts live in the hosts' own mount namespaces and died with them; unmount anything that leaked here.
	local m
	while read -r m; do
		[[ -n $m ]] && umount -l "$m"
	done < <(awk -v d="$LAB_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
	if ((keep == 0)); then
		rm -rf "$LAB_DIR"
	else
		rm -f "$LAB_DIR"/hv*/{ready,failed,power.pid,worker.pid,unshare.pid,hung,watchdog.pid,bmc/ipmi_sim.pid,bmc/off}
	fi
	note "down: done ($(elapsed "$start"))"
}

cmd_status() {
	local n k hd power link lv worker wpid domains
	n=$(lab_size)
	for ((k = 1; k <= n; k++)); do
		hd=$(host_dir "$k")
		power=off lv=- worker=- domains=-
		host_on "$k" && power=on
		link=down
		[[ $(ip -o link show "$(veth_of "$k")" 2>/dev/null) =~ \<([A-Z_]+,)*UP[,\>] ]] && link=up
		if [[ $power == on && -e $hd/hung ]]; then
			power=on,hung lv=frozen worker=frozen
		elif [[ $power == on ]]; then
			if timeout -k 2 5 virsh -q -c "$(local_uri "$k")" uri >/dev/null 2>&1; then lv=up; else lv=down; fi
			worker=none
			if wpid=$(cat "$hd/worker.pid" 2>/dev/null); then
				if pid=$(ns_to_host_pid "$k" "$wpid"); then worker="running(pid $pid)"; else worker=restarting; fi
			fi
			if [[ $lv == up ]]; then
				domains=$(host_domains "$k" | awk -F'\t' '{gsub(/ /, "-", $3); printf "%s%s:%s", sep, $2, $3; sep=","}') ||
					domains="?"
			fi
		fi
		printf 'hv%d power=%s link=%s libvirtd=%s worker=%s bmc=%s watchdog=%s domains=%s\n' "$k" "$power" "$link" "$lv" "$worker" \
			"$(bmc_running "$k" >/dev/null && echo "up(127.0.0.1:$(bmc_port "$k"))" || echo down)" \
			"$(if ! watchdog_running "$k" >/dev/null; then echo none; elif [[ -s $hd/watchdog.on ]]; then echo "on($(cat "$hd/watchdog.on"))"; else echo off; fi)" \
			"${domains:--}"
	done
}

# local_uri K: the host's libvirtd through its unix socket, which works even while the host is cut off.
local_uri() { echo "qemu:///system?socket=$(host_dir "$1")/run/libvirt-sock"; }

host_domains() { # host_domains K: "hvK<TAB>name<TAB>state" lines
	local k=$1
	timeout -k 2 10 virsh -c "$(local_uri "$k")" list --all |
		awk -v h="hv$k" 'seen && NF >= 3 {name=$2; $1=""; $2=""; sub(/^ +/, ""); printf "%s\t%s\t%s\n", h, name, $0} /^-+$/ {seen=1}'
}

cmd_domains() {
	local n k
	n=$(lab_size)
	for ((k = 1; k <= n; k++)); do
		host_on "$k" && [[ -e $(host_dir "$k")/ready && ! -e $(host_dir "$k")/hung ]] || continue
		local out
		# A host powered off (or hung) while we asked it has no domains to list.
		if ! out=$(host_domains "$k"); then
			host_on "$k" && [[ -e $(host_dir "$k")/ready && ! -e $(host_dir "$k")/hung ]] && die "hv$k: virsh list --all failed"
			continue
		fi
		if [[ -n $out ]]; then echo "$out"; else echo "hv$k"; fi
	done
}

cmd_power() { # cmd_power HOST on|off
	local k start out
	k=$(host_index "$1")
	start=$(now)
	out=$(ipmi "$k" chassis power "$2" 2>&1) || die "$1: BMC 127.0.0.1:$(bmc_port "$k"): chassis power $2: $out"
	if [[ $2 == off ]]; then
		local deadline=$(($(now) + 10000000))
		while host_on "$k"; do
			(($(now) < deadline)) || die "$1: still on 10s after chassis power off"
			sleep 0.02
		done
	else
		wait_ready "$k"
		wait_link "$k"
	fi
	note "$1: power $2 ($(elapsed "$start"))"
}

cmd_link() { # cmd_link HOST up|down
	local k
	k=$(host_index "$1")
	ip link set "$(veth_of "$k")" "$2"
	[[ $2 == down ]] || wait_link "$k"
}

# wait_link K: until the host's link carries traffic. The kernel applies carrier changes asynchronously (up to a
# second later), and the bridge forwards on the port only after that.
wait_link() {
	local k=$1 veth state deadline
	veth=$(veth_of "$k")
	deadline=$(($(now) + 5000000))
	while :; do
		state=""
		{ read -r state <"/sys/class/net/$veth/brport/state"; } 2>/dev/null || true
		# brport state 3 is forwarding.
		[[ $state == 3 && $(ip -o link show "$veth") == *"state UP"* &&
			$(ip -n "$(netns_of "$k")" -o link show eth1) == *"state UP"* ]] && return 0
		(($(now) < deadline)) || die "hv$k: link $veth not forwarding 5s after it was set up"
		sleep 0.02
	done
}

cmd_kill_worker() {
	local k hd wpid pid
	k=$(host_index "$1")
	hd=$(host_dir "$k")
	host_on "$k" || die "$1: powered off"
	wpid=$(cat "$hd/worker.pid" 2>/dev/null) || die "$1: no worker (is VMHA_BIN set?)"
	pid=$(ns_to_host_pid "$k" "$wpid") || die "$1: worker (pid $wpid inside the host) is not running"
	kill -KILL "$pid"
	note "$1: killed worker pid $pid"
}

# in_host_mnt K CMD...: run CMD in the host's mount namespace (that of its init).
in_host_mnt() {
	local k=$1 pid
	shift
	host_on "$k" || die "hv$k: powered off"
	pid=$(cat "$(host_dir "$k")/power.pid")
	# -p too: the host's /proc is its PID namespace's, and umount reads /proc/self/mountinfo.
	nsenter -t "$pid" -m -p -- "$@"
}

# lab_mount_at K PATH: the host has a mount of ours at PATH (mountinfo's mount point field).
lab_mount_at() {
	local pid
	pid=$(cat "$(host_dir "$1")/power.pid")
	awk -v p="$2" '$5 == p {found=1} END {exit !found}' "/proc/$pid/mountinfo"
}

cmd_hide_share() {
	local k hd share
	k=$(host_index "$1")
	hd=$(host_dir "$k") share=$LAB_DIR/share
	mkdir -p "$hd/empty-share"
	lab_mount_at "$k" "$share" && die "$1: the share is already hidden"
	in_host_mnt "$k" mount --bind "$hd/empty-share" "$share"
	note "$1: share hidden (an empty directory over $share)"
}

cmd_show_share() {
	local k share
	k=$(host_index "$1")
	share=$LAB_DIR/share
	lab_mount_at "$k" "$share" || { note "$1: share not hidden"; return 0; }
	in_host_mnt "$k" umount "$share"
	note "$1: share visible again"
}

cmd_shadow() {
	local k hd file copy
	k=$(host_index "$1")
	file=$(readlink -f "$2")
	[[ -f $file && $file == "$LAB_DIR/"* ]] || die "shadow: $2: want a file under $LAB_DIR"
	hd=$(host_dir "$k")
	mkdir -p "$hd/shadow"
	copy=$hd/shadow/$(basename "$file")
	cp --sparse=always "$file" "$copy"
	in_host_mnt "$k" mount --bind "$copy" "$file"
	note "$1: $file shadowed by a copy"
}

cmd_unshadow() {
	local k hd file
	k=$(host_index "$1")
	file=$(readlink -f "$2")
	hd=$(host_dir "$k")
	if host_on "$k" && lab_mount_at "$k" "$file"; then in_host_mnt "$k" umount "$file"; fi
	rm -f "$hd/shadow/$(basename "$file")"
}

cmd_hold_worker() {
	local k hd
	k=$(host_index "$1")
	hd=$(host_dir "$k")
	[[ $2 =~ ^[A-Za-z0-9_.-]+$ ]] || die "hold-worker: VM name '$2'"
	echo "$2" >"$hd/hold-worker-on"
}

cmd_release_worker() {
	local k hd
	k=$(host_index "$1")
	hd=$(host_dir "$k")
	rm -f "$hd/hold-worker-on" "$hd/worker.hold"
}

# host_procs K: the host's processes (root-namespace PIDs): those in the PID namespace of its init.
host_procs() {
	local k=$1 init ns p
	init=$(cat "$(host_dir "$k")/power.pid")
	ns=$(readlink "/proc/$init/ns/pid") || return 0
	for p in $(netns_pids "$(netns_of "$k")"); do
		[[ $(readlink "/proc/$p/ns/pid" 2>/dev/null) == "$ns" ]] && echo "$p"
	done
	return 0
}

proc_state() { local stat; { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1; stat=${stat##*) }; echo "${stat:0:1}"; }

# cmd_hang HOST: every process of the host stops at once (SIGSTOP, which SIGKILL still ends: a power-off kills a
# hung host for real; the cgroup freezer would not let it die until thawed), and its link goes down.
cmd_hang() {
	local k hd p left i frozen
	k=$(host_index "$1")
	hd=$(host_dir "$k")
	host_on "$k" || die "$1: powered off"
	[[ -e $hd/hung ]] && die "$1: already hung"
	# Readers of the host's libvirtd (lab.sh domains, a test's copy watcher) skip a hung host: give a call in
	# flight time to finish before libvirtd freezes.
	touch "$hd/hung"
	sleep 0.3
	for ((i = 0; i < 100; i++)); do
		left=0
		for p in $(host_procs "$k"); do
			[[ $(proc_state "$p") == [TtZX] ]] && continue
			kill -STOP "$p" 2>/dev/null || true
			left=1
		done
		((left == 0)) && break
		sleep 0.005
	done
	((left == 0)) || die "$1: processes keep running: $(host_procs "$k" | tr '\n' ' ')"
	ip link set "$(veth_of "$k")" down
	frozen=$(now)
	note "$1: hung ($(host_procs "$k" | wc -l) processes stopped, link down)"
	echo "$frozen"
}

cmd_thaw() {
	local k hd p
	k=$(host_index "$1")
	hd=$(host_dir "$k")
	if ! host_on "$k"; then
		rm -f "$hd/hung"
		note "$1: powered off: nothing to thaw"
		return 0
	fi
	[[ -e $hd/hung ]] || { note "$1: not hung"; return 0; }
	for p in $(host_procs "$k"); do kill -CONT "$p" 2>/dev/null || true; done
	ip link set "$(veth_of "$k")" up
	wait_link "$k"
	rm -f "$hd/hung"
	note "$1: thawed"
}

cmd_bmc_off() {
	local k pid
	k=$(host_index "$1")
	touch "$(host_dir "$k")/bmc/off"
	if pid=$(bmc_running "$k"); then
		kill -KILL "$pid"
		wait_gone 5 "$pid" || die "$1: ipmi_sim $pid survives SIGKILL"
	fi
	note "$1: BMC off"
}

cmd_bmc_on() {
	local k out deadline
	k=$(host_index "$1")
	rm -f "$(host_dir "$k")/bmc/off"
	ensure_bmc "$k"
	deadline=$(($(now) + 5000000))
	until out=$(ipmi "$k" -N 1 -R 1 chassis power status 2>&1); do
		(($(now) < deadline)) || die "$1: BMC does not answer after bmc-on: $out"
		sleep 0.05
	done
	note "$1: BMC on ($out)"
}

cmd_pull_plug() {
	local k
	k=$(host_index "$1")
	cmd_bmc_off "$1"
	with_host_lock "$k" halt "$k"
	ip link set "$(veth_of "$k")" down
	note "$1: host and BMC without power"
}

set_watchdog() { # set_watchdog K on [TIMEOUT] | off
	local hd
	hd=$(host_dir "$1")
	case $2 in
	on)
		[[ ${3:-4s} =~ ^[0-9]+(\.[0-9]+)?(ms|s|m)$ ]] || die "watchdog: timeout '${3:-}': want a Go duration like 4s"
		echo "${3:-4s}" >"$hd/watchdog.on"
		;;
	off) rm -f "$hd/watchdog.on" ;;
	*) die "watchdog: want on or off" ;;
	esac
}

cmd_inventory() {
	local n k
	n=$(lab_size)
	echo "hosts:"
	for ((k = 1; k <= n; k++)); do
		cat <<-EOF
			  - name: hv$k
			    address: $(host_addr "$k")
			    libvirtURI: qemu+tcp://$(host_addr "$k")/system
			    bmc:
			      address: 127.0.0.1
			      port: $(bmc_port "$k")
			      user: admin
			      passwordFile: $(passfile_of "$k")
			    labels:
			      rack: r$k
		EOF
	done
}

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2; }

main() {
	local cmd=${1:-}
	(($#)) && shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	status) cmd_status ;;
	power-off) (($# == 1)) || die "usage: power-off HOST"; cmd_power "$1" off ;;
	power-on) (($# == 1)) || die "usage: power-on HOST"; cmd_power "$1" on ;;
	cut) (($# == 1)) || die "usage: cut HOST"; cmd_link "$1" down ;;
	restore) (($# == 1)) || die "usage: restore HOST"; cmd_link "$1" up ;;
	kill-worker) (($# == 1)) || die "usage: kill-worker HOST"; cmd_kill_worker "$1" ;;
	virsh)
		(($# >= 1)) || die "usage: virsh HOST ARGS..."
		local k
		k=$(host_index "$1")
		shift
		exec virsh -c "qemu+tcp://$(host_addr "$k")/system" "$@"
		;;
	domains) cmd_domains ;;
	hide-share) (($# == 1)) || die "usage: hide-share HOST"; cmd_hide_share "$1" ;;
	show-share) (($# == 1)) || die "usage: show-share HOST"; cmd_show_share "$1" ;;
	shadow) (($# == 2)) || die "usage: shadow HOST FILE"; cmd_shadow "$1" "$2" ;;
	unshadow) (($# == 2)) || die "usage: unshadow HOST FILE"; cmd_unshadow "$1" "$2" ;;
	hold-worker) (($# == 2)) || die "usage: hold-worker HOST VM"; cmd_hold_worker "$1" "$2" ;;
	release-worker) (($# == 1)) || die "usage: release-worker HOST"; cmd_release_worker "$1" ;;
	hang) (($# == 1)) || die "usage: hang HOST"; cmd_hang "$1" ;;
	thaw) (($# == 1)) || die "usage: thaw HOST"; cmd_thaw "$1" ;;
	bmc-off) (($# == 1)) || die "usage: bmc-off HOST"; cmd_bmc_off "$1" ;;
	bmc-on) (($# == 1)) || die "usage: bmc-on HOST"; cmd_bmc_on "$1" ;;
	pull-plug) (($# == 1)) || die "usage: pull-plug HOST"; cmd_pull_plug "$1" ;;
	storage-cut) (($# == 1)) || die "usage: storage-cut HOST"; cmd_hide_share "$1" ;;
	storage-restore) (($# == 1)) || die "usage: storage-restore HOST"; cmd_show_share "$1" ;;
	watchdog)
		(($# == 2 || $# == 3)) || die "usage: watchdog HOST on [TIMEOUT] | watchdog HOST off"
		set_watchdog "$(host_index "$1")" "$2" "${3:-}"
		;;
	inventory) cmd_inventory ;;
	bmc-port) bmc_port "$(host_index "${1:-}")" ;;
	address) host_addr "$(host_index "${1:-}")" ;;
	password-file) passfile_of "$(host_index "${1:-}")" ;;
	_init) cmd_init "$@" ;;
	_chassis) cmd_chassis "$@" ;;
	help | -h | --help) usage ;;
	*) usage; die "unknown command '$cmd'" ;;
	esac
}

main "$@"
