/* Ground truth for `kspan hist --func` (tests/hist.rs): functions of known lengths, one
 * recursive, each call timed by the program itself and reported as log2 buckets (bit length
 * of the duration in ns, as kspan's kernel histograms count). Every length is far from a
 * power of two, so both clocks put a call in the same bucket.
 *
 *   funcs N   ->  N x sleepy(3 ms), N x recurse(3) (4 nested calls: ~1.5, 3, 4.6, 6.1 ms),
 *                 N x thrower() (leaves through longjmp: its return never happens), and one
 *                 thread that ends inside exiter() (pthread_exit: no return either)
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static jmp_buf env;
static unsigned long hist_sleepy[65], hist_recurse[65];

static unsigned long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (unsigned long long)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static int bucket(unsigned long long ns) { return ns ? 64 - __builtin_clzll(ns) : 0; }

static void pause_us(long us) {
  struct timespec t = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&t, 0);
}

__attribute__((noinline)) void sleepy(long us) { pause_us(us); }

/* Sleeps 1.5 ms, then recurses: recurse(n) lasts about (n + 1) x 1.5 ms. */
__attribute__((noinline)) int recurse(int n) {
  unsigned long long t0 = now_ns();
  pause_us(1500);
  int r = n == 0 ? 0 : 1 + recurse(n - 1);
  hist_recurse[bucket(now_ns() - t0)]++;
  return r;
}

__attribute__((noinline)) void thrower(void) {
  pause_us(100);
  longjmp(env, 1);
}

__attribute__((noinline)) void exiter(void) { pthread_exit(0); }

static void *exiting_thread(void *arg) {
  (void)arg;
  exiter();
  return 0;
}

static void print_hist(const char *name, unsigned long *h, int last) {
  printf("\"%s\": {", name);
  int first = 1;
  for (int b = 0; b < 65; b++)
    if (h[b]) {
      printf("%s\"%d\": %lu", first ? "" : ", ", b, h[b]);
      first = 0;
    }
  printf("}%s", last ? "" : ", ");
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 10;
  for (int i = 0; i < n; i++) {
    unsigned long long t0 = now_ns();
    sleepy(3000);
    hist_sleepy[bucket(now_ns() - t0)]++;
    recurse(3);
    if (setjmp(env) == 0) thrower();
  }
  pthread_t t;
  pthread_create(&t, 0, exiting_thread, 0);
  pthread_join(t, 0);
  printf("{");
  print_hist("sleepy", hist_sleepy, 0);
  print_hist("recurse", hist_recurse, 1);
  printf("}\n");
  return 0;
}
