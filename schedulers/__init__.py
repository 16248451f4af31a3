"""The kernel's schedulers, one module each (``ip_vs_<name>.c``), each with a
``SCHEDULER`` class implementing :class:`lvs.sched.Scheduler`.  The core finds
them by name through :func:`lvs.sched.get_scheduler`."""
