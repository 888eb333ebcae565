"""A memory-mapped file: shared memory with a path, whose contents stay in the file."""
import os
import tempfile

from ipcraft.primitives import MappedFile

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "counter.bin")
    with MappedFile.create(path, 8) as m:                # open + ftruncate + mmap(MAP_SHARED)
        pid = os.fork()
        if pid == 0:
            with MappedFile.open(path) as mine:
                mine.buf[:8] = (42).to_bytes(8, "little")
                mine.flush()                             # msync: on the disk, not only in the page cache
            os._exit(0)
        os.waitpid(pid, 0)
        print("mapped:", int.from_bytes(m.buf[:8], "little"))
    with open(path, "rb") as f:                          # the data outlives every mapping
        print("in the file:", int.from_bytes(f.read(), "little"))
