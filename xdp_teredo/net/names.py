"""Interface names: the tunnel's default, and what Linux accepts as a name."""

from ..errors import UsageError

# Miredo's compiled-in default is "miredo"; Debian's miredo.conf names it "teredo",
# and so do we, for the client and the relay alike.
DEFAULT_TUNNEL = "teredo"

# IFNAMSIZ (16) including the terminating NUL.
_IFNAMSIZ = 16


def check_interface_name(name: str, what: str = "interface name") -> str:
    """`name` if Linux accepts it as an interface name (dev_valid_name), else UsageError."""
    if (not isinstance(name, str) or not name or len(name) >= _IFNAMSIZ
            or name in (".", "..")
            or any(ch in name for ch in "/:") or any(ch.isspace() for ch in name)):
        raise UsageError(f"invalid {what}: {name!r} (1-{_IFNAMSIZ - 1} characters, "
                         "no '/', ':' or white space)")
    return name
