"""A Unix socket channel: duplex messages, and the kernel names the peer (SO_PEERCRED)."""
import os
import tempfile

import ipcraft

with tempfile.TemporaryDirectory() as d:
    url = f"unix://{d}/service.sock"
    with ipcraft.listen(url) as listener:                # socket + bind + listen, mode 0600
        pid = os.fork()
        if pid == 0:
            with ipcraft.connect(url, timeout=5) as ch:
                ch.send({"question": "pid?"})
                reply = ch.recv(timeout=5)
                print("client got", reply["answer"] == os.getpid(), flush=True)  # os._exit() does not flush
            os._exit(0)
        with listener.accept(timeout=5) as ch:
            ch.recv(timeout=5)
            ch.send({"answer": ch.peer.pid})              # who connected, as the kernel says
        os.waitpid(pid, 0)
