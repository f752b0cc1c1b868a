/* bin2c: writes a C file defining `const unsigned char NAME[]` and `const size_t NAME_len` from
 * the bytes of a file. Used at build time to embed the reflection descriptor set. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bin2c FILE NAME\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        perror(argv[1]);
        return 1;
    }
    printf("#include <stddef.h>\nconst unsigned char %s[] = {\n", argv[2]);
    size_t n = 0;
    for (;;) {
        int c = fgetc(f);
        if (c == EOF)
            break;
        printf("%s0x%02x,", n % 16 == 0 ? "\n" : "", (unsigned)c);
        n++;
    }
    printf("\n};\nconst size_t %s_len = %zu;\n", argv[2], n);
    fclose(f);
    return ferror(stdout) ? 1 : 0;
}
