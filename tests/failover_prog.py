"""Programs for the VRRP failover test (tests/test_sync_failover.py), run in
its namespaces:

* ``echo-server PORT NAME``: every line a client sends comes back prefixed
  with NAME (the real server's name); connections stay open.
* ``clients HOST PORT COUNT SECONDS``: COUNT long-lived TCP connections,
  each sending a line every 0.1 s and waiting for its echo; prints JSON:
  per connection the server, the monotonic times of the echoes received and
  the error if it broke.  CLOCK_MONOTONIC is the host's, so the test can set
  these times beside the moment it killed the master.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading
import time


def echo_server(port: int, name: str, lifetime: float) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(256)
    srv.settimeout(0.5)
    deadline = time.monotonic() + lifetime
    print("ready", flush=True)

    def handle(c: socket.socket) -> None:
        c.settimeout(lifetime)
        f = c.makefile("rb")
        try:
            for line in f:
                c.sendall(name.encode() + b" " + line)
        except OSError:
            pass
        finally:
            c.close()

    while time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def clients(host: str, port: int, count: int, seconds: float, period: float = 0.1) -> list[dict]:
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(count):
        s = socket.create_connection((host, port), timeout=5)
        s.setblocking(False)
        st = {"i": i, "sock": s, "buf": b"", "server": "", "echoes": [], "error": "", "sent": 0, "waiting": False}
        conns.append(st)
        sel.register(s, selectors.EVENT_READ, st)
    print("connected", flush=True)
    end = time.monotonic() + seconds
    next_send = time.monotonic()
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            for st in conns:
                if not st["error"] and not st["waiting"]:
                    try:
                        st["sock"].send(f"{st['i']} {st['sent']}\n".encode())
                        st["sent"] += 1
                        st["waiting"] = True
                    except OSError as exc:
                        st["error"] = str(exc)
            next_send = now + period
        for key, _ in sel.select(timeout=max(0.0, min(next_send, end) - time.monotonic())):
            st = key.data
            try:
                data = st["sock"].recv(4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                st["error"] = str(exc)
                sel.unregister(st["sock"])
                continue
            if not data:
                st["error"] = "closed by peer"
                sel.unregister(st["sock"])
                continue
            st["buf"] += data
            while b"\n" in st["buf"]:
                line, _, st["buf"] = st["buf"].partition(b"\n")
                st["server"] = line.split(b" ", 1)[0].decode()
                st["echoes"].append(round(time.monotonic(), 4))
                st["waiting"] = False
    out = []
    for st in conns:
        st["sock"].close()
        out.append({k: st[k] for k in ("i", "server", "echoes", "error", "sent")})
    return out


def main(argv: list[str]) -> int:
    if argv[0] == "echo-server":
        echo_server(int(argv[1]), argv[2], float(argv[3]) if len(argv) > 3 else 120.0)
    elif argv[0] == "clients":
        json.dump(clients(argv[1], int(argv[2]), int(argv[3]), float(argv[4])), sys.stdout)
    else:
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
