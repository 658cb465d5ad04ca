# Shared shell helpers for tools/*.sh. Sourced, not run.

# dpkg-query, apt-get, modprobe, sysctl, ip and tc live in /usr/sbin or /sbin on
# Debian: a PATH without them (CI runners, cron, `su` without -l) must not break
# the set-up. Appended, so that the caller's choices still come first.
for _d in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$_d:"*) ;; *) PATH="$PATH:$_d" ;; esac
done
export PATH
unset _d

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" = 0 ] || die "$1 must run as root (it installs packages and mounts bpffs)"
}

# apt_ensure PKG...: install the packages that are not installed yet; never lets a
# package's service start on this host (policy-rc.d answers 101 "action forbidden"
# while we install, and is removed again if we put it there).
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
    say "installing ${missing[*]}"
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    # tshark asks whether non-root users may capture; answer "no" without a prompt.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections 2>/dev/null || true
    local stamp=/var/lib/apt/periodic/xdp-teredo-update-stamp rc=0
    if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
        apt-get update -q >/dev/null || say "apt-get update failed; trying with the lists we have"
        mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/xdp-teredo-apt.log 2>&1 || rc=$?
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $rc = 0 ] || { tail -20 /tmp/xdp-teredo-apt.log >&2; die "apt-get install ${missing[*]} failed (log: /tmp/xdp-teredo-apt.log)"; }
}
