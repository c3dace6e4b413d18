/*
 * The program `cargo xtask demo` records: a small batch job that generates
 * order lines as text, parses them into records, aggregates them per
 * customer in a hash table, sorts the customers by spend and checksums the
 * result. Every step is its own (never inlined) function, so scope sees the
 * shape of the work: a few long calls (checksum), many short ones
 * (parse_record, hash_key, table_insert) and very many tiny ones
 * (compare_records, called by qsort).
 *
 * Each batch is asked of an "upstream" first: a thread started for the
 * request at the other end of a socket pair, which answers after 15 ms
 * (`--hooks net` follows the request from the read that took it to the
 * answer).
 *
 * Build: cc -g -O1 -fno-omit-frame-pointer -pthread demo.c -o demo
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define NOINLINE __attribute__((noinline))
#define LINES 2000     /* order lines per batch */
#define BATCHES 3      /* batches per run */
#define SLOTS 4096     /* hash table slots (a power of two) */

/* One order line: "customer-<id>,<region>,<cents>". */
struct record {
    char key[32];
    int region;
    long cents;
};

/* Per-customer totals, open addressing. */
struct table {
    struct record slots[SLOTS];
    int used;
};

static uint64_t rng_state = 42;

/* xorshift64: the same data on every run. Inlined: it is not the work. */
static inline __attribute__((always_inline)) uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* LINES order lines of text, as if read from a file. */
NOINLINE char *generate_text(void) {
    char *text = malloc(LINES * 48);
    char *p = text;
    for (int i = 0; i < LINES; i++)
        p += sprintf(p, "customer-%04d,%d,%ld\n", (int)(next_random() % 1500),
                     (int)(next_random() % 8), (long)(next_random() % 100000));
    return text;
}

/* Parses one line into rec; returns the start of the next line. */
NOINLINE const char *parse_record(const char *line, struct record *rec) {
    const char *comma = strchr(line, ',');
    size_t n = (size_t)(comma - line) < sizeof rec->key ? (size_t)(comma - line) : sizeof rec->key - 1;
    memcpy(rec->key, line, n);
    rec->key[n] = '\0';
    char *end;
    rec->region = (int)strtol(comma + 1, &end, 10);
    rec->cents = strtol(end + 1, &end, 10);
    return end + 1;
}

/* FNV-1a, strengthened with extra mixing rounds (a stand-in for a real hash). */
NOINLINE uint64_t hash_key(const char *key) {
    uint64_t h = 1469598103934665603ULL;
    for (int round = 0; round < 2048; round++)
        for (const char *c = key; *c; c++)
            h = (h ^ (uint8_t)*c) * 1099511628211ULL;
    return h;
}

/* Adds rec's amount to its customer's total. */
NOINLINE void table_insert(struct table *t, const struct record *rec) {
    size_t i = hash_key(rec->key) & (SLOTS - 1);
    while (t->slots[i].key[0] && strcmp(t->slots[i].key, rec->key) != 0)
        i = (i + 1) & (SLOTS - 1);
    if (!t->slots[i].key[0]) {
        t->slots[i] = *rec;
        t->used++;
    } else {
        t->slots[i].cents += rec->cents;
    }
}

/* qsort order: highest spend first, then by key. */
NOINLINE int compare_records(const void *a, const void *b) {
    const struct record *x = a, *y = b;
    if (x->cents != y->cents)
        return x->cents < y->cents ? 1 : -1;
    return strcmp(x->key, y->key);
}

/* Compacts the table's used slots to the front and sorts them. */
NOINLINE int sort_records(struct table *t) {
    int n = 0;
    for (int i = 0; i < SLOTS; i++)
        if (t->slots[i].key[0])
            t->slots[n++] = t->slots[i];
    qsort(t->slots, (size_t)n, sizeof t->slots[0], compare_records);
    return n;
}

/* A slow integrity check over the sorted result: the run's long calls. */
NOINLINE uint64_t checksum(const struct record *recs, int n) {
    uint64_t sum = 0;
    for (int pass = 0; pass < 60000; pass++)
        for (int i = 0; i < n; i++)
            sum = (sum ^ (uint64_t)recs[i].cents) * 6364136223846793005ULL + (uint64_t)pass;
    return sum;
}

/* The socket pair to the upstream: [0] is ours, [1] the upstream's. */
static int upstream_fd[2];

/* The upstream's work on one request: 15 ms (a sleep here). */
NOINLINE void serve_request(char *req) {
    struct timespec ts = {0, 15 * 1000 * 1000};
    nanosleep(&ts, NULL);
    req[0] = 'A';
}

/* The upstream: reads one request, serves it, answers. */
static void *upstream(void *arg) {
    (void)arg;
    char req[16];
    if (recv(upstream_fd[1], req, sizeof req, MSG_WAITALL) == (ssize_t)sizeof req) {
        serve_request(req);
        send(upstream_fd[1], req, sizeof req, 0);
    }
    return NULL;
}

/* Asks the upstream for the next batch and waits for its answer: time off
 * the CPU, which scope records as the call's offcpu_ns (and who woke it)
 * and `analyze` reports as waiting. */
NOINLINE void wait_for_upstream(void) {
    pthread_t up;
    char req[16] = "next batch";
    if (pthread_create(&up, NULL, upstream, NULL)) {
        perror("demo: upstream");
        exit(1);
    }
    send(upstream_fd[0], req, sizeof req, 0);
    recv(upstream_fd[0], req, sizeof req, MSG_WAITALL);
    pthread_join(up, NULL);
}

/* One batch: generate, parse, aggregate, sort, check. */
NOINLINE uint64_t run_batch(struct table *t, long *top_cents) {
    char *text = generate_text();
    const char *p = text;
    struct record rec;
    memset(t, 0, sizeof *t);
    for (int i = 0; i < LINES; i++) {
        p = parse_record(p, &rec);
        table_insert(t, &rec);
    }
    free(text);
    int n = sort_records(t);
    *top_cents = t->slots[0].cents;
    return checksum(t->slots, n);
}

int main(void) {
    static struct table table;
    uint64_t sum = 0;
    long top = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, upstream_fd)) {
        perror("demo: socketpair");
        return 1;
    }
    for (int b = 0; b < BATCHES; b++) {
        wait_for_upstream();
        sum ^= run_batch(&table, &top);
    }
    printf("demo: %d batches of %d orders, %d customers, top spend %ld.%02ld, checksum %016llx\n",
           BATCHES, LINES, table.used, top / 100, top % 100, (unsigned long long)sum);
    return 0;
}
