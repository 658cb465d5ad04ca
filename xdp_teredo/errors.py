"""The project's one error family.

The CLI turns any TeredoError into one line on stderr: exit 2 for a user's mistake
(bad usage or input), exit 1 for a runtime failure. Code that calls bcc or pyroute2
wraps their exceptions in one of these, with the cause chained.
"""


class TeredoError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 1


class UsageError(TeredoError):
    """Bad command-line usage or input given by the user."""

    exit_code = 2


class RuntimeFailure(TeredoError):
    """Something on the machine failed (kernel, netlink, BPF, sockets)."""

    exit_code = 1


class MalformedPacket(TeredoError):
    """Bytes that do not parse as the packet they claim to be.

    Parsers raise this and nothing else for any input: truncated, garbage or
    inconsistent lengths. `reason` is a short constant word for counters.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"malformed packet: {reason}" + (f" ({detail})" if detail else ""))


class NotTeredoAddress(UsageError):
    """An IPv6 address outside 2001::/32, or not an IPv6 address at all."""
