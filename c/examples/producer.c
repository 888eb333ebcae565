/* producer URL: send each line of standard input (without its newline; lines up to 1 MiB) as one raw
 * message on URL (ring://name: a ring that exists; shm://name: a listener), then close.
 *
 *     cc -O2 -pthread -I c -o producer c/examples/producer.c
 *     printf 'one\ntwo\n' | ./producer shm://demo
 *
 * Exit status: 0 at end of input, 1 on any error (said on standard error), 2 on bad usage. */
#include "../ipcraft.h"

#include <stdlib.h>

#define MAX_LINE (1024 * 1024)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s ring://NAME | shm://NAME  (lines on standard input)\n", argv[0]);
        return 2;
    }
    ipc_chan ch;
    int rc = ipc_open(&ch, argv[1]);
    if (rc < 0) {
        fprintf(stderr, "producer: opening %s: %s\n", argv[1], strerror(-rc));
        return 1;
    }
    static char inbuf[1 << 20]; /* large reads: a 1 MiB line in one or two read(2) calls */
    setvbuf(stdin, inbuf, _IOFBF, sizeof inbuf);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int status = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        if (n > 0 && line[n - 1] == '\n')
            n--;
        if (n > MAX_LINE) {
            fprintf(stderr, "producer: a line of %zd bytes is longer than 1 MiB\n", n);
            status = 1;
            break;
        }
        if ((rc = ipc_send(&ch, line, (size_t)n)) < 0) {
            fprintf(stderr, "producer: sending on %s: %s\n", argv[1], strerror(-rc));
            status = 1;
            break;
        }
    }
    free(line);
    ipc_close(&ch);
    return status;
}
