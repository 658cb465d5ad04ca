# TEMPORARY (daemon branch only): the data-path branch provides the real module.
from .loader import Datapath as ClientDatapath, detach_stale  # noqa: F401
