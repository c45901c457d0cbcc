/* bench-func's workload: N calls of a function that does almost nothing, timed by the
 * program itself (its start-up is not counted). Prints the elapsed ns. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) int work(int x) {
  __asm__ volatile("" ::: "memory");
  return x + 1;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 100000;
  struct timespec a, b;
  int acc = 0;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) acc = work(acc);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%lld %d\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000ll + (b.tv_nsec - a.tv_nsec), acc);
  return 0;
}
