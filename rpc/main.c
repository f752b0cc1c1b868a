/* rpc/main.c: pinsd's entry point. */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "pinsd: starting\n");
    return 0;
}
