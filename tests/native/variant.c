/* Distinct copies of one library for the discovery tests: each -DVARIANT=n gives other bytes, so another
   GNU build-id. Built as libcufft.so.11 (a CUDA library name no real install on the test machine has). */
#ifndef VARIANT
#define VARIANT 0
#endif
int ingero_variant(void) { return VARIANT; }
