/* gemm_shapes.c -- not a test: times vaec_sgemm on the eleven products of one 512-row
 * chunk of the bench's model (784-400-20) on 2 threads, 300 calls each, and prints each
 * one's best and mean time and its share of the FMA peak the probe measures first. The
 * figures of "What is left" in docs/PERFORMANCE.md come from it.
 *
 *   gcc -std=c11 -O3 -fno-math-errno -fno-strict-aliasing -Icsrc tests/c/gemm_shapes.c csrc/[a-z]*.c -lm -lpthread -o /tmp/gemm_shapes
 *   /tmp/gemm_shapes */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
int main(void){
  vaec_pool *pool = NULL;
  if (vaec_pool_create(&pool, 2)) return 1;
  int sh[][5]={{512,400,784,0,0},{784,400,512,1,0},{512,40,400,0,1},{40,400,512,1,0},{512,400,40,0,0},
               {512,400,20,0,1},{400,20,512,1,0},{512,20,400,0,0},{512,784,400,0,1},{784,400,512,1,0},{512,400,784,0,0}};
  const char *nm[]={"enc0 fwd (Wt)","enc0 dWt","heads fwd","heads dW","heads dX","dec0 fwd","dec0 dW","dec0 dX","out fwd","out dW","out dX"};
  float *A=vaec_alloc(1<<21,4),*B=vaec_alloc(1<<21,4),*C=vaec_alloc(1<<21,4);
  for(int i=0;i<(1<<21);i++){A[i]=(i%7)*0.1f;B[i]=(i%5)*0.1f;}
  double peak = vaec_cpu_peak_gflops(pool, 0.5);
  printf("peak %.0f\n", peak);
  double tot_f=0, tot_t=0;
  for(int s=0;s<11;s++){int M=sh[s][0],N=sh[s][1],K=sh[s][2],ta=sh[s][3],tb=sh[s][4];
    int lda=ta?M:K, ldb=tb?K:N; double best=1e9, sum=0; int reps=300;
    for(int r=0;r<reps;r++){double t0=now(); vaec_sgemm(pool,ta,tb,M,N,K,A,lda,B,ldb,0.0f,C,N); double dt=now()-t0; sum+=dt; if(dt<best)best=dt;}
    double f=2.0*M*N*K; tot_f+=f; tot_t+=sum/reps;
    printf("%-14s %4dx%4dx%4d best %6.1f us (%3.0f%%) mean %6.1f us (%3.0f%%)\n",nm[s],M,N,K,best*1e6,100*f/best/1e9/peak,sum/reps*1e6,100*f/(sum/reps)/1e9/peak);}
  printf("all: %.0f%% of peak (means)\n", 100*tot_f/tot_t/1e9/peak);
  vaec_free(A); vaec_free(B); vaec_free(C); vaec_pool_destroy(pool);
  return 0;
}
