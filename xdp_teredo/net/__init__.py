"""What touches the machine's network: the tunnel device (netlink, /dev/net/tun) and
the control plane's UDP socket. No protocol logic lives here."""
