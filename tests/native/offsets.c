/* A non-PIE executable whose functions' link-time addresses differ from their file offsets
   (0x401000 vs 0x1000): the bytes it prints from memory must equal the file's bytes at file_offset. */
#include <stdio.h>

int __attribute__((noinline)) ingero_probe_me(int x) { return x * 7 + 3; }

int main(void) {
    const unsigned char *p = (const unsigned char *)&ingero_probe_me;
    printf("%lx ", (unsigned long)p);
    for (int i = 0; i < 16; i++) printf("%02x", p[i]);
    printf("\n");
    return ingero_probe_me(0) == 3 ? 0 : 1;
}
