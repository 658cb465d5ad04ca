"""A ControlServer served by a real EventLoop in a background thread, as a daemon
serves it: shared by the control-socket and CLI unit tests (no root needed: an
abstract socket with a name of its own in the test's network namespace)."""

import secrets
import threading

from xdp_teredo.daemon import control
from xdp_teredo.daemon.loop import EventLoop


class Served:
    def __init__(self, handlers, clock=None):
        self.tunnel = "ut" + secrets.token_hex(4)
        self.name = control.tunnel_socket(self.tunnel)
        self.loop = EventLoop(clock)
        self.server = control.ControlServer(self.name, handlers,
                                            owner=f"a Teredo client with tunnel {self.tunnel}",
                                            hint="stop it, or use --tunnel NAME").open()
        self.server.attach(self.loop)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def close(self):
        self.loop.stop()
        self.thread.join(2)
        self.server.close()
        self.loop.close()
