"""TEMPORARY: the old names of the client's driver, for the daemons that still
import them; to be removed when the daemons move (issue 10). Use client.py."""

from .client import MAPS, PROGRAMS, RX_PROGRAMS, detach_stale  # noqa: F401
from .client import ClientAttachment as Attachment  # noqa: F401
from .client import ClientDatapath as Datapath  # noqa: F401
from .hooks import TC_EGRESS, TC_HANDLE, TC_INGRESS, TC_PRIO  # noqa: F401
from .source import bpf_dir  # noqa: F401
