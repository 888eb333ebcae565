"""A TCP channel on the loopback: an authkey both sides must know, and a port the kernel chooses."""
import os

import ipcraft

key = os.urandom(32)
with ipcraft.listen("tcp://127.0.0.1:0", authkey=key) as listener:   # port 0: any free port
    host, port = listener.endpoint.host_port                          # the port the kernel chose
    url = f"tcp://{host}:{port}"
    pid = os.fork()
    if pid == 0:
        with ipcraft.connect(url, authkey=key, timeout=5) as ch:      # HMAC challenge both ways
            ch.send([1, 2, 3])
            print("client got", ch.recv(timeout=5), flush=True)   # os._exit() does not flush
        os._exit(0)
    with listener.accept(timeout=5) as ch:
        ch.send(sum(ch.recv(timeout=5)))
    os.waitpid(pid, 0)
