"""Request/reply: a server answers each client on its own connection; replies cannot cross."""
import os
import tempfile

import ipcraft

with tempfile.TemporaryDirectory() as d:
    url = f"unix://{d}/calc.sock"
    with ipcraft.listen(url) as listener:
        server = os.fork()
        if server == 0:                                  # the server: one request per connection
            for _ in range(2):
                with listener.accept(timeout=10) as ch:
                    a, b = ch.recv(timeout=10)
                    ch.send(a + b)
            os._exit(0)
        clients = []
        for a, b in ((1, 2), (40, 2)):
            pid = os.fork()
            if pid == 0:                                 # a client: ask, wait for the answer
                with ipcraft.connect(url, timeout=10) as ch:
                    ch.send([a, b])
                    print(f"{a} + {b} = {ch.recv(timeout=10)}", flush=True)
                os._exit(0)
            clients.append(pid)
        for pid in [*clients, server]:
            os.waitpid(pid, 0)
