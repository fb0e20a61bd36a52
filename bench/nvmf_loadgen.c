/* A small NVMe/TCP load generator in C, driving a target the way the Linux
 * and SPDK hosts do: each command PDU is sent on its own, as soon as the
 * completion that frees its slot arrives (one send per command).  It exists
 * so that bench/cload.py can measure blockfabric's per-command cost with a
 * load generator that is not itself the limit (blockfabric perf is Python).
 *
 * One admin queue (Connect, CC.EN, CSTS.RDY) and one I/O queue; reads
 * (C2HData, with or without the SUCCESS flag) and writes with in-capsule data
 * (the I/O must fit the target's in-capsule size: 4 KiB by default); no
 * digests, no R2T, no TLS.  Prints one line of key=value results.
 *
 *   nvmf_loadgen -a 127.0.0.1 -s 4420 -n NQN -q 32 -o 4096 -w randread -t 5
 *                [-l 512] [-N nblocks] [-H hostnqn] [-p: busy-poll the socket]
 *
 * Built by bench/cload.py with `cc -O2`; not part of the package. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define T_ICREQ 0x00
#define T_ICRESP 0x01
#define T_CAPSULE_CMD 0x04
#define T_CAPSULE_RESP 0x05
#define T_C2H_DATA 0x07
#define T_TERM 0x03
#define F_SUCCESS 0x08
#define MAXQD 1024

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *m) {
    fprintf(stderr, "nvmf_loadgen: %s (%s)\n", m, strerror(errno));
    exit(2);
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static void send_all(int fd, const uint8_t *b, size_t n) {
    while (n) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("send");
        }
        b += k;
        n -= (size_t)k;
    }
}

static void recv_all(int fd, uint8_t *b, size_t n) {
    while (n) {
        ssize_t k = recv(fd, b, n, 0);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) continue;
            die("recv (connection closed?)");
        }
        b += k;
        n -= (size_t)k;
    }
}

static int dial(const char *addr, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) die("address");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    uint8_t ic[128] = {0};
    ic[0] = T_ICREQ;
    ic[2] = 128;
    put32(ic + 4, 128);
    send_all(fd, ic, 128);
    recv_all(fd, ic, 128);
    if (ic[0] != T_ICRESP) die("no ICResp");
    return fd;
}

/* one command capsule, optional in-capsule data; returns the CQE */
static void capsule(int fd, uint8_t *sqe, const uint8_t *data, uint32_t dlen) {
    uint8_t hdr[8 + 64];
    hdr[0] = T_CAPSULE_CMD;
    hdr[1] = 0;
    hdr[2] = 72;
    hdr[3] = dlen ? 72 : 0;
    put32(hdr + 4, 72 + dlen);
    memcpy(hdr + 8, sqe, 64);
    send_all(fd, hdr, 72);
    if (dlen) send_all(fd, data, dlen);
}

static void admin_resp(int fd, uint8_t *cqe) {
    uint8_t h[8];
    recv_all(fd, h, 8);
    uint32_t plen = get32(h + 4);
    if (h[0] != T_CAPSULE_RESP || plen != 24) die("unexpected admin PDU");
    recv_all(fd, cqe, 16);
    if (get16(cqe + 14) >> 1) {
        errno = 0;
        fprintf(stderr, "nvmf_loadgen: status 0x%x\n", get16(cqe + 14) >> 1);
        exit(2);
    }
}

static uint16_t fabrics_connect(int fd, const char *subnqn, const char *hostnqn, uint16_t qid,
                                uint16_t sqsize, uint16_t cntlid, uint8_t cattr) {
    uint8_t sqe[64] = {0}, data[1024] = {0}, cqe[16];
    sqe[0] = 0x7F;
    sqe[1] = 0x40; /* SGL */
    put16(sqe + 2, 1);
    sqe[4] = 0x01; /* Connect */
    put32(sqe + 24 + 8, 1024);
    sqe[24 + 15] = 0x01; /* data block, offset subtype: in-capsule */
    put16(sqe + 42, qid);
    put16(sqe + 44, sqsize);
    sqe[46] = cattr;
    put32(sqe + 48, qid ? 0 : 120000); /* KATO on the admin queue */
    for (int i = 0; i < 16; i++) data[i] = (uint8_t)(0xB0 + i);
    put16(data + 16, cntlid);
    strncpy((char *)data + 256, subnqn, 255);
    strncpy((char *)data + 512, hostnqn, 255);
    capsule(fd, sqe, data, 1024);
    admin_resp(fd, cqe);
    return get16(cqe);
}

static uint64_t prop(int fd, int set, uint32_t off, uint64_t val) {
    uint8_t sqe[64] = {0}, cqe[16];
    sqe[0] = 0x7F;
    sqe[1] = 0x40;
    put16(sqe + 2, 2);
    sqe[4] = set ? 0x00 : 0x04;
    sqe[40] = 0; /* 4-byte property */
    put32(sqe + 44, off);
    put64(sqe + 48, val);
    capsule(fd, sqe, NULL, 0);
    admin_resp(fd, cqe);
    return get32(cqe);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t xorshift(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *nqn = NULL, *rw = "randread";
    const char *hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000c10a";
    int port = 4420, qd = 32, io = 4096, lba = 512;
    double secs = 5;
    uint64_t nblocks = 256ull * 2048;
    int c, busy = 0;
    while ((c = getopt(argc, argv, "a:s:n:q:o:w:t:l:N:H:p")) != -1) {
        switch (c) {
        case 'a': addr = optarg; break;
        case 's': port = atoi(optarg); break;
        case 'n': nqn = optarg; break;
        case 'q': qd = atoi(optarg); break;
        case 'o': io = atoi(optarg); break;
        case 'w': rw = optarg; break;
        case 't': secs = atof(optarg); break;
        case 'l': lba = atoi(optarg); break;
        case 'N': nblocks = strtoull(optarg, NULL, 0); break;
        case 'H': hostnqn = optarg; break;
        case 'p': busy = 1; break; /* busy-poll the socket (like perf --busy-poll) */
        default: fprintf(stderr, "usage: see the file's comment\n"); return 2;
        }
    }
    if (!nqn || qd < 1 || qd > MAXQD || io < lba || io % lba) {
        fprintf(stderr, "nvmf_loadgen: need -n NQN, 1 <= -q <= %d, -o a multiple of -l\n", MAXQD);
        return 2;
    }
    int is_write = strstr(rw, "write") != NULL, is_rand = strncmp(rw, "rand", 4) == 0;
    uint32_t nlb = (uint32_t)(io / lba);
    uint64_t span = nblocks / nlb; /* I/O-sized units */

    int afd = dial(addr, port);
    uint16_t cntlid = fabrics_connect(afd, nqn, hostnqn, 0, 31, 0xFFFF, 0);
    prop(afd, 1, 0x14, 0x00460001); /* CC: EN, IOSQES 6, IOCQES 4 */
    for (int i = 0; i < 1000 && !(prop(afd, 0, 0x1C, 0) & 1); i++) usleep(1000);
    int fd = dial(addr, port);
    /* 2 x QD entries, at most 128 (the target's default max queue depth);
     * with QD + 1 > 128 the SQ-full rule would cap QD: SQ flow control off */
    int entries = 2 * qd > 128 ? 128 : 2 * qd;
    fabrics_connect(fd, nqn, hostnqn, 1, (uint16_t)(entries - 1), cntlid,
                    qd + 1 > entries ? 0x04 : 0);

    uint8_t *wdata = malloc((size_t)io);
    memset(wdata, 0xA5, (size_t)io);
    uint64_t start[MAXQD + 1];
    uint64_t seq = 0, ios = 0, lat_sum = 0, sends = 0;
    size_t cap = 4u << 20, have = 0, off = 0;
    uint8_t *buf = malloc(cap);
    int outstanding = 0, stopping = 0;

    /* one send per command: header + in-capsule data in one sendmsg-like write */
    uint8_t *cmdbuf = malloc(72 + (size_t)io);
#define SUBMIT(cid)                                                                     \
    do {                                                                                \
        uint64_t unit = is_rand ? xorshift() % span : (seq % span);                     \
        seq++;                                                                          \
        memset(cmdbuf, 0, 72);                                                          \
        cmdbuf[0] = T_CAPSULE_CMD;                                                      \
        cmdbuf[2] = 72;                                                                 \
        uint8_t *s = cmdbuf + 8;                                                        \
        s[0] = is_write ? 0x01 : 0x02;                                                  \
        s[1] = 0x40;                                                                    \
        put16(s + 2, (uint16_t)(cid));                                                  \
        put32(s + 4, 1);                                                                \
        put32(s + 24 + 8, (uint32_t)io);                                                \
        s[24 + 15] = is_write ? 0x01 : 0x5A;                                            \
        put64(s + 40, unit * nlb);                                                      \
        put32(s + 48, nlb - 1);                                                         \
        size_t n = 72;                                                                  \
        if (is_write) {                                                                 \
            cmdbuf[3] = 72;                                                             \
            memcpy(cmdbuf + 72, wdata, (size_t)io);                                     \
            n += (size_t)io;                                                            \
        }                                                                               \
        put32(cmdbuf + 4, (uint32_t)n);                                                 \
        start[(cid)] = now_ns();                                                        \
        send_all(fd, cmdbuf, n);                                                        \
        sends++;                                                                        \
        outstanding++;                                                                  \
    } while (0)

    uint64_t t0 = now_ns(), tend = t0 + (uint64_t)(secs * 1e9);
    for (int cid = 1; cid <= qd; cid++) SUBMIT(cid);
    while (outstanding) {
        if (off == have) off = have = 0;
        if (cap - have < (size_t)io + 128) {
            memmove(buf, buf + off, have - off);
            have -= off;
            off = 0;
        }
        ssize_t k = recv(fd, buf + have, cap - have, busy ? MSG_DONTWAIT : 0);
        if (k <= 0) {
            if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            die("recv (connection closed?)");
        }
        have += (size_t)k;
        while (have - off >= 8) {
            uint8_t *p = buf + off;
            uint32_t plen = get32(p + 4);
            if (have - off < plen) break;
            int done_cid = -1;
            if (p[0] == T_CAPSULE_RESP) {
                uint16_t st = get16(p + 8 + 14) >> 1;
                if (st) {
                    fprintf(stderr, "nvmf_loadgen: I/O status 0x%x\n", st);
                    return 1;
                }
                done_cid = get16(p + 8 + 12);
            } else if (p[0] == T_C2H_DATA) {
                if (p[1] & F_SUCCESS) done_cid = get16(p + 8);
            } else {
                fprintf(stderr, "nvmf_loadgen: unexpected PDU type 0x%x\n", p[0]);
                return 1;
            }
            off += plen;
            if (done_cid >= 1 && done_cid <= qd) {
                uint64_t t = now_ns();
                lat_sum += t - start[done_cid];
                ios++;
                outstanding--;
                if (!stopping && t >= tend) stopping = 1;
                if (!stopping) SUBMIT(done_cid);
            }
        }
    }
    double el = (double)(now_ns() - t0) / 1e9;
    printf("ios=%llu seconds=%.3f iops=%.0f mibs=%.1f lat_us=%.2f sends=%llu qd=%d io=%d rw=%s\n",
           (unsigned long long)ios, el, ios / el, ios * (double)io / el / 1048576.0,
           ios ? lat_sum / 1e3 / ios : 0.0, (unsigned long long)sends, qd, io, rw);
    close(fd);
    close(afd);
    return 0;
}
