"""Two processes talking over a Unix socket channel (the README example)."""
import os

import ipcraft

path = os.environ.get("IPCRAFT_EXAMPLE_SOCK", "/tmp/demo.sock")
url = f"unix://{path}"

with ipcraft.listen(url) as listener:
    if os.fork() == 0:                                   # the child is the client
        with ipcraft.connect(url) as ch:
            ch.send({"job": 42, "data": b"\x00" * 16})
            print("child got", ch.recv(), flush=True)  # os._exit() does not flush
        os._exit(0)
    with listener.accept(timeout=5) as ch:               # the parent serves one client
        job = ch.recv(timeout=5)
        ch.send({"done": job["job"], "peer_pid": ch.peer.pid})
    os.wait()
