"""pylvs: Linux IPVS (the kernel's L4 load balancer) as a userspace program.

``lvs`` is the emulated kernel: services, real servers, the connection table,
protocol state machines, persistence, stats.  It performs no I/O: time and
randomness are passed in by whoever drives it (the daemon, ``lvsadm simulate``,
the tests).
"""

__version__ = "0.1.0"
