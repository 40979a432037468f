/* Open-loop HTTP/1.1 load: requests go out on a fixed schedule, whatever the
 * server does, over a pool of keep-alive connections; each latency is measured
 * from the moment the request was due (so a stall counts for every request it
 * delayed). Prints one latency in microseconds per line, in schedule order.
 *
 *   openloop HOST PORT RATE SECONDS CONNECTIONS PATH [HEADER...]
 *
 * Built and run by bench/latency.py; responses must carry Content-Length. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    long req;         /* index of the request in flight, -1 when idle */
    char buf[65536];
    size_t len;
} conn_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int dial(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(1); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* Replace a connection the server closed (or is closing) with a new one. */
static void redial(int ep, conn_t *cn, unsigned index, const char *host, int port) {
    epoll_ctl(ep, EPOLL_CTL_DEL, cn->fd, NULL);
    close(cn->fd);
    cn->fd = dial(host, port);
    cn->len = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = index};
    epoll_ctl(ep, EPOLL_CTL_ADD, cn->fd, &ev);
}

int main(int argc, char **argv) {
    if (argc < 7) { fprintf(stderr, "usage: openloop HOST PORT RATE SECONDS CONNECTIONS PATH [HEADER...]\n"); return 2; }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int nconn = atoi(argv[5]);
    char request[4096];
    int rl = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n", argv[6], host, port);
    for (int i = 7; i < argc; i++) rl += snprintf(request + rl, sizeof request - rl, "%s\r\n", argv[i]);
    rl += snprintf(request + rl, sizeof request - rl, "\r\n");

    long total = (long)(rate * seconds);
    double *due = calloc(total, sizeof(double)), *lat = calloc(total, sizeof(double));
    conn_t *conns = calloc(nconn, sizeof(conn_t));
    int *idle = calloc(nconn, sizeof(int)), nidle = 0;
    int ep = epoll_create1(0);
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = dial(host, port);
        conns[i].req = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
        idle[nidle++] = i;
    }
    double t0 = now_s() + 0.05;
    for (long i = 0; i < total; i++) due[i] = t0 + i / rate;
    long next = 0, done = 0, errors = 0, reconnects = 0;
    while (done < total) {
        double t = now_s();
        while (next < total && due[next] <= t && nidle > 0) {  /* send everything due */
            int c = idle[--nidle];
            conns[c].req = next++;
            conns[c].len = 0;
            if (write(conns[c].fd, request, rl) != rl) { perror("write"); return 1; }
        }
        double wait = 0.1;
        if (next < total && nidle > 0) {
            wait = due[next] - now_s();
            if (wait < 0) wait = 0;
        }
        struct timespec ts = {.tv_sec = (time_t)wait, .tv_nsec = (long)((wait - (time_t)wait) * 1e9)};
        struct epoll_event evs[64];
        int n = epoll_pwait2(ep, evs, 64, &ts, NULL);  /* nanosecond timeout: no spinning */
        for (int k = 0; k < n; k++) {
            conn_t *cn = &conns[evs[k].data.u32];
            ssize_t r = read(cn->fd, cn->buf + cn->len, sizeof cn->buf - cn->len - 1);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) {
                if (cn->req >= 0) {
                    fprintf(stderr, "connection closed by the server with request %ld in flight\n", cn->req);
                    return 1;
                }
                /* An idle keep-alive connection the server closed: legitimate; dial again. */
                redial(ep, cn, evs[k].data.u32, host, port);
                reconnects++;
                continue;
            }
            cn->len += r;
            cn->buf[cn->len] = 0;
            char *end = strstr(cn->buf, "\r\n\r\n");
            if (!end) continue;
            char *cl = strcasestr(cn->buf, "\r\ncontent-length:");
            if (!cl || cl > end) { fprintf(stderr, "response without Content-Length\n"); return 1; }
            size_t body = strtoul(cl + 17, NULL, 10);
            size_t need = (end + 4 - cn->buf) + body;
            if (cn->len < need) continue;
            if (strncmp(cn->buf + 9, "200", 3) != 0) errors++;
            lat[cn->req] = now_s() - due[cn->req];
            done++;
            char *cc = strcasestr(cn->buf, "\r\nconnection: close");
            int closing = cc && cc < end;
            memmove(cn->buf, cn->buf + need, cn->len - need);
            cn->len -= need;
            cn->req = -1;
            if (closing) {  /* the server ends the connection (nginx's keepalive_requests) */
                redial(ep, cn, evs[k].data.u32, host, port);
                reconnects++;
            }
            idle[nidle++] = evs[k].data.u32;
        }
    }
    for (long i = 0; i < total; i++) printf("%.1f\n", lat[i] * 1e6);
    if (errors) fprintf(stderr, "%ld non-200 responses\n", errors);
    if (reconnects) fprintf(stderr, "%ld connections closed by the server, dialled again\n", reconnects);
    return 0;
}
