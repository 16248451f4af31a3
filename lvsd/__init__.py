"""The program: ``lvsd`` (the daemon) and ``lvsadm`` (the command line).

The one place that touches the host (sockets, clock, files, argv, the
environment) and wires the pure core in ``lvs/`` to the data planes in
``forwarding/``.
"""
