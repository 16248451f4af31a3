"""Teaching with pylvs: plots of simulated scenarios and the scheduler lab in
the browser (``lvsadm lab``).  The pure halves (reports, explanations) are in
``lvs/``; this package draws and serves them."""
