/* consumer URL: write each raw message received on URL to standard output followed by a newline,
 * flushed per message (ring://name: a ring that exists; shm://name: a listener).
 *
 *     cc -O2 -pthread -I c -o consumer c/examples/consumer.c
 *     ./consumer ring://demo
 *
 * A ring has no end: the consumer runs until killed.  On shm:// it ends when the peer closes (exit
 * 0, after every message) or dies (exit 1).  A message from another serializer than raw is reported
 * on standard error and skipped.  Exit status 2 on bad usage. */
#include "../ipcraft.h"

#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s ring://NAME | shm://NAME\n", argv[0]);
        return 2;
    }
    ipc_chan ch;
    int rc = ipc_open(&ch, argv[1]);
    if (rc < 0) {
        fprintf(stderr, "consumer: opening %s: %s\n", argv[1], strerror(-rc));
        return 1;
    }
    size_t room = 1024 * 1024 + 1;
    char *buf = malloc(room);
    int status = 0;
    for (;;) {
        ssize_t n = buf ? ipc_recv(&ch, buf, room - 1) : -ENOMEM;
        if (n == -ENOBUFS) { /* a larger message: grow and take it */
            char *bigger = realloc(buf, ch.info.needed + 1);
            if (!bigger) {
                n = -ENOMEM;
            } else {
                buf = bigger;
                room = ch.info.needed + 1;
                continue;
            }
        }
        if (n == -EBADMSG) {
            fprintf(stderr, "consumer: skipped a message that is not raw bytes (serializer id %u)\n",
                    ch.info.last_sid);
            continue;
        }
        if (n == -ESHUTDOWN)
            break; /* the peer closed: everything it sent has been written */
        if (n < 0) {
            fprintf(stderr, "consumer: receiving on %s: %s\n", argv[1],
                    n == -EPIPE ? "the peer vanished" : strerror((int)-n));
            status = 1;
            break;
        }
        buf[n] = '\n';
        if (fwrite(buf, 1, (size_t)n + 1, stdout) != (size_t)n + 1 || fflush(stdout) != 0) {
            status = 1; /* standard output closed */
            break;
        }
    }
    free(buf);
    ipc_close(&ch);
    return status;
}
