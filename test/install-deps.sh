#!/usr/bin/env bash
# Installs, with apt-get, whatever a fresh Debian machine lacks to build the
# BPF objects and run the tests and the demo. Idempotent and quiet when
# nothing is missing.
set -euo pipefail

# command -> Debian package
declare -A need=(
	[clang]=clang
	[llvm-strip]=llvm
	[ip]=iproute2
	[ethtool]=ethtool
	[curl]=curl
	[iperf3]=iperf3
	[socat]=socat
	[nft]=nftables
	[conntrack]=conntrack
	[iptables]=iptables
	[bpftool]=bpftool
	[stun]=stun-client
	[stund]=stun-server
	[traceroute]=traceroute
	[ping]=iputils-ping
	[nfcapd]=nfdump
	[dnsmasq]=dnsmasq-base
	[kea-dhcp4]=kea-dhcp4-server
	[dhclient]=isc-dhcp-client
	# NAT-PMP's client, for the PCP server's end-to-end test.
	[natpmpc]=natpmpc
	# The unit tests run systemd-analyze verify and security on the units;
	# installing the package in a container only adds the tools, it starts
	# nothing (systemd is not PID 1 there).
	[systemd-analyze]=systemd
)
missing=()
for cmd in "${!need[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# Headers: libbpf's helpers and the kernel's uapi (asm/ via gcc-multilib).
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -e /usr/include/asm/types.h ] || missing+=(gcc-multilib linux-libc-dev)
# PostgreSQL 15 for the fleet database's tests (test/testutil/pgtest
# starts a server of each test's own from these programs, not a service).
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "blocknat needs: ${missing[*]} (install them, or run this as root on Debian)" >&2
	exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Debian's package creates and starts a "main" cluster on install unless
# told not to; the tests need only the programs.
if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
	mkdir -p /etc/postgresql-common
	echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
