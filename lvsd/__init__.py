"""The pylvs program: lvsd (the daemon) and lvsadm (the CLI), the one place
that wires the emulated kernel (``lvs/``) to the data planes."""
