#!/bin/bash
# Make kernel headers available to bcc, which compiles at run time.
#
# bcc looks in $BCC_KERNEL_SOURCE, then /lib/modules/$(uname -r)/{build,source}.
# 1. The distribution's linux-headers-$(uname -r), when it has one, fills that path.
# 2. Otherwise (a kernel the distribution did not build, as on our machines) we take
#    its generic headers package and merge the -common and -<arch> trees into one
#    folder with symlinks: bcc needs both, and either alone fails
#    ("./include/linux/kconfig.h not found"). The result is cached under
#    $XDP_TEREDO_CACHE/kernel-headers/ and found there by xdp_teredo.datapath.kheaders.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CACHE=${XDP_TEREDO_CACHE:-/var/cache/xdp-teredo}
KVER=$(uname -r)
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)

if [ -n "${BCC_KERNEL_SOURCE:-}" ] && [ -e "$BCC_KERNEL_SOURCE/include/linux/kconfig.h" ]; then
    say "kernel headers: \$BCC_KERNEL_SOURCE=$BCC_KERNEL_SOURCE"; exit 0
fi
if [ -e "/lib/modules/$KVER/build/include/linux/kconfig.h" ]; then
    say "kernel headers: /lib/modules/$KVER/build (matches the running kernel)"; exit 0
fi
if apt-cache show "linux-headers-$KVER" >/dev/null 2>&1; then
    apt_ensure "linux-headers-$KVER"
    if [ -e "/lib/modules/$KVER/build/include/linux/kconfig.h" ]; then
        say "kernel headers: linux-headers-$KVER installed"; exit 0
    fi
fi

# Fallback: the distribution's generic headers, merged.
case "$(. /etc/os-release; echo "${ID:-}")" in
    ubuntu) META=linux-headers-generic ;;
    *) META=linux-headers-$ARCH ;;
esac
apt_ensure "$META"
common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
[ -n "$common" ] || die "no /usr/src/linux-headers-*-common after installing $META"
base=${common%-common}
flavour=$(ls -d "$base"-* 2>/dev/null | grep -v -- '-common$' | sort -V | tail -1 || true)
[ -n "$flavour" ] || flavour=$base
ver=$(basename "$base" | sed 's/^linux-headers-//')
merged="$CACHE/kernel-headers/$ver-merged"
if [ ! -e "$merged/.complete" ]; then
    rm -rf "$merged"; mkdir -p "$merged"
    cp -as "$common/." "$merged/"
    [ "$flavour" != "$base" ] && cp -asf "$flavour/." "$merged/"
    touch "$merged/.complete"
fi
ln -sfn "$merged" "$CACHE/kernel-headers/current"
say "kernel headers: no package for $KVER; merged $(basename "$common") + $(basename "$flavour") into $merged (cached; bcc uses it via BCC_KERNEL_SOURCE)"
