"""Guest load tool for the RDMA bench row: THREADS threads of O_DIRECT preadv
of BS bytes at random aligned offsets of DEV for SECS seconds (QD = THREADS;
the GIL is released during each read), or one sequential pass with SEQ=1.
Prints 'iops=N mibs=M'."""

import mmap
import os
import random
import sys
import threading
import time

dev, bs, threads, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
seq = len(sys.argv) > 5 and sys.argv[5] == "seq"
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
size = os.lseek(fd, 0, os.SEEK_END)
blocks = size // bs
count = [0] * threads
stop = time.monotonic() + secs


def worker(i: int) -> None:
    buf = mmap.mmap(-1, bs)
    rnd = random.Random(i)
    n = 0
    off = i * (blocks // max(threads, 1))
    while time.monotonic() < stop:
        b = (off + n) % blocks if seq else rnd.randrange(blocks)
        os.preadv(fd, [buf], b * bs)
        n += 1
    count[i] = n


t0 = time.monotonic()
ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
dt = time.monotonic() - t0
n = sum(count)
print(f"iops={n / dt:.1f} mibs={n * bs / dt / 1048576:.2f}")
