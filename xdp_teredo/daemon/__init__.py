"""The skeleton every role runs on.

    base.py        Daemon and run(): signals before set-up, set-up -> drop privileges
                   -> serve -> teardown (an undo stack, tried step by step)
    loop.py        the event loop: one selector, a wake-up fd, named deadlines
    notify.py      systemd's readiness protocol: READY, STATUS, WATCHDOG, STOPPING
    control.py     the control socket and its query protocol, for all three roles
    tunnel.py      what the client and the relay share: the slow path's UDP socket
                   and tun, and carrying out the PeerList's actions
    counters.py    the slow path's counters
    render.py      status / peers / stats / counters, as answers and as text
    privileges.py  dropping root, keeping CAP_NET_ADMIN
    preflight.py   `xdp-teredo check`
"""
